"""The egress gateway proxy kind: the one proxy of a mesh that talks to the outside.

``meshline egress-gateway --name egress --port 10002`` registers a Dataplane of proxy kind
``egress-gateway``; a Mesh with ``spec.egress.gateway: egress`` makes every sidecar send its
ExternalService traffic there (``render/external.py``: mTLS to the gateway's identity, SNI
``<external service>.<mesh>.external``). The gateway's one listener (``egress/<port>``,
on every address of its host) has a chain per ExternalService, picked by that SNI, which
requires a client certificate of the mesh, and passes the bytes to the ExternalService's
cluster: DNS, TLS origination and verification as a sidecar would do it without a gateway.

Routes, timeouts and retries stay with the caller's sidecar (it speaks HTTP to the gateway
inside the mTLS session); the gateway works at L4 and firewall rules name one host. It is
where TrafficPermissions whose destination is an ExternalService are enforced (the caller's
certificate says who it is; without a gateway nothing of the mesh stands between a sidecar
and the outside). Its connections are logged (when they close) and counted by the
render steps like a sidecar's TCP outbound (its section is ``egress-gateway/egress/<port>/<service>``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from envoy.config.listener.v3 import listener_components_pb2 as lc
from envoy.config.listener.v3 import listener_pb2

from meshline.core.dataplane import DataplaneSpec, Inbound
from meshline.core.resource import Resource
from meshline.render import envoy, external
from meshline.render.mesh_snapshot import MeshSnapshot
from meshline.render.plugins import Plugin
from meshline.render.sections import InboundSection, OutboundSection, Section, SectionId
from meshline.xds import names
from meshline.xds.snapshot import CLUSTER, ENDPOINT, LISTENER, ROUTE, Packed, pack

P = TypeVar("P")
Run = Callable[..., None]


@dataclass
class EgressSection(Section):
    """The gateway's listener: one mTLS chain per ExternalService, chosen by SNI."""

    chains: list[lc.FilterChain] = field(default_factory=list)

    def finalize(self) -> dict[str, list[Packed]]:
        lst = listener_pb2.Listener()
        lst.CopyFrom(self.listener)
        del lst.filter_chains[:]
        lst.listener_filters.append(envoy.tls_inspector())
        lst.filter_chains.extend(self.chains)
        # anything else (an ExternalService removed, a client that is not a sidecar): closed.
        # Also what makes a listener of a mesh without ExternalServices valid.
        lst.default_filter_chain.CopyFrom(lc.FilterChain(name=names.BLOCKED_LISTENER, filters=[
            envoy.network_filter("envoy.filters.network.tcp_proxy", envoy.tcp_proxy(names.BLOCKED_LISTENER,
                                                                                   names.BLOCKED_CLUSTER))]))  # fmt: skip
        return {
            LISTENER: [pack(lst.name, lst)],
            CLUSTER: [pack(n, c) for n, c in self.clusters.items()],
            ENDPOINT: [pack(n, e) for n, e in self.endpoints.items()],
            ROUTE: [],
        }


def _chain(dataplane: Resource, port: int, name: str, mesh: MeshSnapshot, plugins: Sequence[Plugin],
           run: Run) -> OutboundSection:  # fmt: skip
    """The part of the gateway that reaches ExternalService ``name``: a TCP proxy to it, with
    the render steps' access logs and stats (a section of its own)."""
    spec = external.declared(mesh)[name]
    assert isinstance(dataplane.spec, DataplaneSpec)
    listener = names.egress_gateway_listener(port)
    section = OutboundSection(
        target=f"egress gateway to {name} ({spec.target})",
        listener=envoy.listener(listener, "0.0.0.0", port),
        id=SectionId("egress-gateway", "egress", port, name),
        service=name,
        protocol="tcp",
        source_tags=tuple(dict(i.tags) for i in dataplane.spec.inbound),
    )
    cluster, cla = external.external_cluster(mesh, name, spec, gateway=False)
    section.clusters[cluster.name] = cluster
    if cla is not None:
        section.endpoints[cluster.name] = cla
    section.tcp = envoy.tcp_proxy(f"{listener}_{name}", cluster.name)
    for plugin in plugins:
        if plugin.outbound is not None and not plugin.kind.is_policy:
            run(f"render step {plugin.kind.kind} on {section.target}", plugin.outbound, section, mesh)
    # The ExternalService as the callee of an L4 inbound: its guards (TrafficPermission) see
    # the calling sidecar's certificate, which the chain requires.
    guard = InboundSection(target=section.target, listener=section.listener, id=section.id,
                           inbound=Inbound(port=port, tags={"service": name}))  # fmt: skip
    for plugin in plugins:
        if plugin.inbound is not None and plugin.on_egress:
            run(f"policy {plugin.kind.kind} on {section.target}", plugin.inbound, guard, dataplane, mesh)
    section.network_filters.extend(guard.network_filters)
    section.applied.extend(guard.applied)
    return section


def egress_listener(dataplane: Resource, mesh: MeshSnapshot, plugins: Sequence[Plugin], run: Run) -> EgressSection:
    spec = dataplane.spec
    assert isinstance(spec, DataplaneSpec)
    port = spec.inbound[0].port
    name = names.egress_gateway_listener(port)
    out = EgressSection(target=f"egress gateway (port {port})", listener=envoy.listener(name, "0.0.0.0", port),
                        id=SectionId("egress-gateway", "egress", port))  # fmt: skip
    mtls = envoy.downstream_mtls(mesh.identity_prefix())
    out.clusters[names.BLOCKED_CLUSTER] = external.blackhole_cluster(names.BLOCKED_CLUSTER, "tcp")
    for es, es_spec in sorted(external.external_services(mesh).items()):
        if es_spec.is_cidr:
            continue  # dialled by address: sidecars reach it directly (render/external.py)
        part = _chain(dataplane, port, es, mesh, plugins, run)
        packed = part.finalize()
        lst = listener_pb2.Listener()
        packed[LISTENER][0].any.Unpack(lst)
        chain = lst.filter_chains[0]
        chain.name = f"{name}_{es}"
        chain.filter_chain_match.server_names.append(names.egress_sni(es, mesh.name))
        chain.filter_chain_match.transport_protocol = "tls"
        chain.transport_socket.CopyFrom(mtls)
        out.chains.append(chain)
        out.clusters.update(part.clusters)
        out.endpoints.update(part.endpoints)
        out.applied.extend(part.applied)
    return out


def parts(dataplane: Resource, mesh: MeshSnapshot, plugins: Sequence[Plugin], run: Run,
          finish: Callable[[Section], P]) -> list[P]:  # fmt: skip
    return [finish(egress_listener(dataplane, mesh, plugins, run))]
