"""Where the transparent outbound listener sends what is not a mesh service.

The mesh's ``transparentProxy.passthrough`` (docs/egress.md):

* ``all``: the listener's default chain passes every other connection through to where it
  was going (an ``ORIGINAL_DST`` cluster);
* ``declared``: ExternalServices have chains of their own (``render/transparent.py``); the
  ``allow`` list gets passthrough chains (an IP or CIDR by destination address, a domain by
  the TLS server name the app sends); everything else reaches the **blocked** chain;
* ``none``: ExternalServices get no chain either; everything outside the mesh is blocked.

The blocked chain is a TCP proxy to a cluster without endpoints: the connection is closed
at once. It is a section of its own (``sidecar/transparent-outbound/<port>/blocked-<mode>``)
configured by the render steps (access logs, stats), so each refused connection is one
access-log entry with its original destination, which telemetry explains ("blocked:
203.0.113.9:443 is not an ExternalService of mesh default and passthrough is declared") and
counts (``meshline stat``, and Envoy's ``tcp.outbound_blocked.*`` stats).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Sequence

from envoy.config.core.v3 import address_pb2
from envoy.config.listener.v3 import listener_components_pb2 as lc

from meshline.core.mesh import PassthroughAllow
from meshline.render import envoy
from meshline.render.external import blackhole_cluster
from meshline.render.mesh_snapshot import MeshSnapshot
from meshline.render.plugins import Plugin
from meshline.render.sections import OutboundSection, SectionId
from meshline.xds import names

Run = Callable[..., None]


def cidr_range(prefix: str) -> address_pb2.CidrRange:
    """An IP (a host prefix) or a CIDR as a filter-chain prefix range."""
    net = ipaddress.ip_network(prefix, strict=False)
    out = address_pb2.CidrRange(address_prefix=str(net.network_address))
    out.prefix_len.value = net.prefixlen
    return out


def allow_chains(entries: Sequence[PassthroughAllow], passthrough: lc.FilterChain,
                 taken_ports: Iterable[int]) -> list[lc.FilterChain]:  # fmt: skip
    """The chains that pass the ``allow`` entries' connections through.

    Envoy picks a chain by destination port first and never falls back from a port that
    has chains of its own to the chains of any port: an entry without a port is repeated on
    every port the listener's other chains name (``taken_ports``)."""
    ports = sorted(set(taken_ports))
    out = []
    for index, entry in enumerate(entries):
        for port in [entry.port] if entry.port is not None else [None, *ports]:
            chain = allow_chain(index, entry, passthrough, port)
            out.append(chain)
    return out


def allow_chain(index: int, entry: PassthroughAllow, passthrough: lc.FilterChain, port: int | None) -> lc.FilterChain:
    """A chain that passes one ``allow`` entry's connections to ``port`` (None: any) through."""
    chain = lc.FilterChain()
    chain.CopyFrom(passthrough)
    chain.name = f"{names.PASSTHROUGH_CLUSTER}_allow_{index}" + (f"_{port}" if port is not None and entry.port is None else "")
    match = chain.filter_chain_match
    if port is not None:
        match.destination_port.value = port
    prefix = entry.prefix
    if prefix is not None:
        match.prefix_ranges.append(cidr_range(prefix))
    else:
        assert entry.domain is not None
        match.server_names.append(entry.domain)
        match.transport_protocol = "tls"
    return chain


def blocked_section(source_tags: tuple[dict[str, str], ...], port: int, mesh: MeshSnapshot,
                    plugins: Sequence[Plugin], run: Run) -> OutboundSection:  # fmt: skip
    """The chain of refused connections, with the render steps' loggers and stats (no policy
    shapes it: nothing it could do matters to a connection that is closed at once)."""
    mode = mesh.spec.transparent_proxy.passthrough
    name = names.BLOCKED_LISTENER
    section = OutboundSection(
        target=f"outbound blocked (transparent, passthrough {mode})",
        listener=envoy.listener(name, "0.0.0.0", port),
        id=SectionId("sidecar", "transparent-outbound", port, names.blocked_section(mode)),
        service=names.BLOCKED_DESTINATION,
        protocol="tcp",
        source_tags=source_tags,
    )
    section.clusters[names.BLOCKED_CLUSTER] = blackhole_cluster(names.BLOCKED_CLUSTER, "tcp")
    section.tcp = envoy.tcp_proxy(name, names.BLOCKED_CLUSTER)
    for plugin in plugins:
        if plugin.outbound is not None and not plugin.kind.is_policy:
            run(f"render step {plugin.kind.kind} on {section.target}", plugin.outbound, section, mesh)
    return section
