"""Transparent mode: the two capture listeners of a dataplane with ``spec.transparent``.

The kernel's capture rules (``agent/capture``) send every connection the app opens to
``outbound_transparent`` and every connection from another host to ``inbound_transparent``;
``original_dst`` gives each its real destination, and Envoy picks a filter chain by it::

  outbound_transparent  0.0.0.0:15001                    inbound_transparent  0.0.0.0:15006
    VIP:80, VIP:<service port>  -> service (mesh)          <inbound port>, mTLS -> the app
    <instance IP>:<its port>    -> service (mesh)          (anything else: refused when mTLS
    anything else -> passthrough (or refused)               is strict, else passed through)

Each chain is the filter chain of an ordinary section (``outbound_section`` /
``inbound_section``) configured by the same policy plugins as explicit upstreams, so HTTPRoute
splits, Retry, Timeout, TrafficPermission, mTLS and telemetry apply unchanged; this module only
builds those sections, renames what must be unique, and moves their chains into the two listeners.

**Protocol detection.** A service none of whose instances declares ``protocol`` is rendered
three times (a *variant* per detected protocol: HTTP/1.1, HTTP/2 incl. gRPC, TCP). On the
outbound listener ``http_inspector`` sets the connection's application protocol
(``http/1.1``/``h2c``) and the chain for it is chosen; between sidecars the variant travels as
the mTLS ALPN (``http/1.1``/``h2``/none), which the inbound matches after ``tls_inspector``.
Inspection waits for the client's first bytes, at most ``DETECTION_TIMEOUT_S``, then goes on as
TCP: a server-speaks-first protocol on a service without a ``protocol`` tag works after that
delay; declare ``protocol: tcp`` to skip it (inspectors run only on ports where some service
is detected).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeVar

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.config.listener.v3 import listener_components_pb2 as lc
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.listener.http_inspector.v3 import http_inspector_pb2
from envoy.extensions.filters.listener.original_dst.v3 import original_dst_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.type.v3 import range_pb2

from meshline.core.dataplane import DataplaneSpec, Inbound, Outbound
from meshline.core.errors import MeshlineError
from meshline.core.resource import Resource
from meshline.core.service import ServiceSpec, in_range, vip_table
from meshline.render import envoy, external, passthrough
from meshline.render.defaults import DEFAULTS
from meshline.render.inbound import inbound_section
from meshline.render.mesh_snapshot import Carry, Endpoint, MeshSnapshot, TrackedMapping
from meshline.render.outbound import outbound_section
from meshline.render.plugins import Plugin
from meshline.render.sections import Applied, Section, SectionId
from meshline.xds import names
from meshline.xds.snapshot import CLUSTER, LISTENER, Packed, pack

P = TypeVar("P")
Run = Callable[..., None]
HTTP_PORT = 80  # every service's VIP answers on port 80 as well as on its own ports
DETECTION_TIMEOUT_S = 0.1
DNS_METADATA = "meshline"  # filter_metadata key on outbound_transparent; the agent reads "dns" there


@dataclass(frozen=True)
class Variant:
    """One protocol a detected service is rendered for."""

    suffix: str  # in names ("" for the declared protocol, or TCP)
    protocol: str  # what the section is rendered as
    plaintext_alpn: tuple[str, ...]  # what http_inspector reports
    tls_alpn: tuple[str, ...]  # what the calling sidecar offers in its mTLS handshake


DECLARED = Variant("", "", (), ())
DETECTED = (
    Variant("http", "http", ("http/1.1",), ("http/1.1",)),
    Variant("h2", "http2", ("h2c",), ("h2",)),
    Variant("", "tcp", (), ()),  # last: the chain without an ALPN condition catches the rest
)


class TransparentRenderError(MeshlineError):
    """The transparent listeners cannot be built for this dataplane."""


@dataclass
class _Assembled(Section):
    """The capture listeners, already built, and everything their chains send to."""

    packed: dict[str, dict[str, Packed]] = field(default_factory=dict)

    def finalize(self) -> dict[str, list[Packed]]:
        out = {t: list(items.values()) for t, items in self.packed.items()}
        out.setdefault(LISTENER, []).append(pack(self.listener.name, self.listener))
        return out


@dataclass(frozen=True)
class _Piece:
    chains: tuple[lc.FilterChain, ...]
    packed: dict[str, list[Packed]]
    applied: tuple[Applied, ...]


# -- helpers --------------------------------------------------------------------------


def vips(mesh: MeshSnapshot) -> dict[str, str]:
    """service -> VIP for this mesh's Service records inside its VIP range."""
    records = [r for r in mesh.of_kind("Service") if isinstance(r.spec, ServiceSpec)]
    return in_range(vip_table(records), mesh.spec.transparent_proxy.vip_range)


def detected(endpoints: Iterable[Endpoint]) -> bool:
    """No instance declares a protocol: it is detected per connection."""
    return all("protocol" not in e.tags for e in endpoints)


def _as_protocol(mesh: MeshSnapshot, service: str, protocol: str) -> MeshSnapshot:
    """``mesh`` as if every instance of ``service`` declared ``protocol`` (one variant's view)."""
    endpoints = dict(_raw(mesh.endpoints))
    endpoints[service] = tuple(replace(e, tags={**e.tags, "protocol": protocol}) for e in mesh.endpoints.get(service, ()))
    p = mesh.protocols
    protocols = {**(p.raw() if isinstance(p, TrackedMapping) else p), service: protocol}
    return replace(mesh, endpoints=TrackedMapping(endpoints, mesh.reads), protocols=TrackedMapping(protocols, mesh.reads),
                   memo={}, since_previous=None)


def _raw(m: Mapping[str, tuple[Endpoint, ...]]) -> Mapping[str, tuple[Endpoint, ...]]:
    return m.raw() if isinstance(m, TrackedMapping) else m


def _rename_clusters(section: Section, service: str, suffix: str) -> None:
    """Give the clusters of ``service`` a variant's names (their protocol options differ)."""
    if not suffix:
        return

    def new(name: str) -> str:
        mine = name == service or name.startswith(service + "_") or name.startswith("localhost_")
        return names.detected_variant(name, suffix) if mine else name

    for name in list(section.clusters):
        cluster = section.clusters.pop(name)
        cluster.name = new(name)
        if cluster.HasField("eds_cluster_config"):
            cluster.eds_cluster_config.service_name = new(cluster.eds_cluster_config.service_name)
        if cluster.HasField("load_assignment"):
            cluster.load_assignment.cluster_name = new(cluster.load_assignment.cluster_name)
        section.clusters[cluster.name] = cluster
    for name in list(section.endpoints):
        cla = section.endpoints.pop(name)
        cla.cluster_name = new(cla.cluster_name)
        section.endpoints[new(name)] = cla
    routes = list(section.routes.values())
    route = getattr(section, "route", None)
    if route is not None and route not in routes:
        routes.append(route)
    for rc in routes:
        for vh in rc.virtual_hosts:
            for r in vh.routes:
                if not r.HasField("route"):
                    continue
                if r.route.cluster:
                    r.route.cluster = new(r.route.cluster)
                for wc in r.route.weighted_clusters.clusters:
                    wc.name = new(wc.name)
                for mirror in r.route.request_mirror_policies:
                    mirror.cluster = new(mirror.cluster)
    if section.tcp is not None:
        if section.tcp.cluster:
            section.tcp.cluster = new(section.tcp.cluster)
        for wc in section.tcp.weighted_clusters.clusters:
            wc.name = new(wc.name)


def _chains_of(packed: Mapping[str, list[Packed]]) -> tuple[tuple[lc.FilterChain, ...], dict[str, list[Packed]]]:
    """Take the (one) listener out of a finalized section: its chains, and the rest."""
    rest = {t: list(items) for t, items in packed.items() if t != LISTENER}
    chains: list[lc.FilterChain] = []
    for p in packed.get(LISTENER, []):
        lst = listener_pb2.Listener()
        p.any.Unpack(lst)
        chains.extend(lst.filter_chains)
    return tuple(chains), rest


def _run_plugins(section: Section, run: Run, plugins: Sequence[Plugin], mesh: MeshSnapshot,
                 dataplane: Resource | None) -> None:  # fmt: skip
    for plugin in plugins:
        hook = plugin.inbound if dataplane is not None else plugin.outbound
        if hook is None:
            continue
        if dataplane is not None:
            run(f"policy {plugin.kind.kind} on {section.target}", hook, section, dataplane, mesh)
        else:
            run(f"policy {plugin.kind.kind} on {section.target}", hook, section, mesh)


# -- outbound -------------------------------------------------------------------------


def _outbound_piece(source_tags: tuple[dict[str, str], ...], service: str, variant: Variant, mesh: MeshSnapshot,
                    plugins: Sequence[Plugin], run: Run) -> _Piece:  # fmt: skip
    view = _as_protocol(mesh, service, variant.protocol) if variant.protocol else mesh
    section = outbound_section(source_tags, Outbound(port=HTTP_PORT, service=service), view, explicit=False)
    name = names.transparent_outbound(service, variant.suffix)
    section.listener.name = name
    section.target = f"outbound {service} (transparent{', detected ' + variant.protocol if variant.protocol else ''})"
    section.id = SectionId("sidecar", "transparent-outbound", HTTP_PORT, f"{service}{variant.suffix}")
    if section.http is not None:
        old = section.route_name
        route = section.routes.pop(old)
        route.name = section.route_name = name
        section.routes[name] = route
        section.http.hcm.rds.route_config_name = name
        section.http.hcm.stat_prefix = names.stat_prefix(name)
    elif section.tcp is not None:
        section.tcp.stat_prefix = names.stat_prefix(name)
    _run_plugins(section, run, plugins, view, None)
    _rename_clusters(section, service, variant.suffix)
    chains, rest = _chains_of(section.finalize())
    return _Piece(chains, rest, tuple(section.applied))


def _prefix(address: str) -> address_pb2.CidrRange:
    return passthrough.cidr_range(address)  # an address, or an ExternalService's CIDR


def _matched(chain: lc.FilterChain, name: str, port: int, prefixes: Sequence[str], alpn: Sequence[str],
             transport: str = "") -> lc.FilterChain:  # fmt: skip
    out = lc.FilterChain()
    out.CopyFrom(chain)
    out.name = name
    m = out.filter_chain_match
    m.destination_port.value = port
    m.prefix_ranges.extend(_prefix(a) for a in prefixes)
    if alpn:
        m.application_protocols.extend(alpn)
    if transport:
        m.transport_protocol = transport
    return out


def _passthrough_chain(name: str) -> lc.FilterChain:
    proxy = tcp_proxy_pb2.TcpProxy(stat_prefix=names.stat_prefix(name), cluster=names.PASSTHROUGH_CLUSTER)
    return lc.FilterChain(name=name, filters=[envoy.network_filter("envoy.filters.network.tcp_proxy", proxy)])


def passthrough_cluster() -> cluster_pb2.Cluster:
    """Sends a connection on to the destination it had (Envoy's own connections are never captured)."""
    c = cluster_pb2.Cluster(
        name=names.PASSTHROUGH_CLUSTER, type=cluster_pb2.Cluster.ORIGINAL_DST, lb_policy=cluster_pb2.Cluster.CLUSTER_PROVIDED
    )
    c.connect_timeout.FromTimedelta(DEFAULTS.connect)
    return c


def _listener_filters(detect_ports: Iterable[int], tls: bool) -> list[lc.ListenerFilter]:
    out = [lc.ListenerFilter(name="envoy.filters.listener.original_dst",
                             typed_config=envoy.packed(original_dst_pb2.OriginalDst()))]  # fmt: skip
    ports = sorted(set(detect_ports))
    only_there = None
    if ports:  # inspect only where some chain needs it: elsewhere a server may speak first at once
        only_there = lc.ListenerFilterChainMatchPredicate(
            not_match=lc.ListenerFilterChainMatchPredicate(
                or_match=lc.ListenerFilterChainMatchPredicate.MatchSet(rules=[
                    lc.ListenerFilterChainMatchPredicate(destination_port_range=range_pb2.Int32Range(start=p, end=p + 1))
                    for p in ports
                ] + [lc.ListenerFilterChainMatchPredicate(destination_port_range=range_pb2.Int32Range(start=0, end=0))])
            )
        )  # fmt: skip
    if tls:
        out.append(envoy.tls_inspector())
    if ports:
        http = lc.ListenerFilter(name="envoy.filters.listener.http_inspector",
                                 typed_config=envoy.packed(http_inspector_pb2.HttpInspector()))  # fmt: skip
        assert only_there is not None
        http.filter_disabled.CopyFrom(only_there)
        out.append(http)
    return out


def _capture_listener(name: str, port: int, ipv6: bool, direction: int) -> listener_pb2.Listener:
    lst = envoy.listener(name, "0.0.0.0", port)
    if ipv6:
        lst.additional_addresses.add().address.CopyFrom(envoy.socket_address("::", port))
    lst.traffic_direction = direction
    lst.listener_filters_timeout.FromMilliseconds(int(DETECTION_TIMEOUT_S * 1000))
    lst.continue_on_listener_filters_timeout = True
    return lst


def outbound_listener(spec: DataplaneSpec, mesh: MeshSnapshot, plugins: Sequence[Plugin], run: Run,
                      tags_key: str, source_tags: tuple[dict[str, str], ...],
                      configurers: tuple[int, ...]) -> _Assembled:  # fmt: skip
    assert spec.transparent is not None
    table = vips(mesh)
    lst = _capture_listener(names.TRANSPARENT_OUTBOUND_LISTENER, spec.transparent.outbound_port,
                            spec.transparent.ipv6, base_pb2.OUTBOUND)  # fmt: skip
    out = _Assembled(target="outbound (transparent)", listener=lst,
                     id=SectionId("sidecar", "transparent-outbound", spec.transparent.outbound_port))
    detect_ports: set[int] = set()
    taken: set[tuple[str, int]] = set()
    for service in mesh.services():
        eps = mesh.endpoints.get(service, ())
        vip = table.get(service)
        variants = DETECTED if detected(eps) else (DECLARED,)
        ports = sorted({HTTP_PORT, *(e.port for e in eps)})
        # an instance dialled by its own address and port goes through the mesh too
        direct: dict[int, list[str]] = {}
        for e in eps:
            if e.address != spec.address and (e.address, e.port) not in taken and not ipaddress.ip_address(e.address).is_loopback:
                taken.add((e.address, e.port))
                direct.setdefault(e.port, []).append(e.address)
        for variant in variants:
            piece = mesh.memoize(
                ("transparent outbound", tags_key, service, variant.suffix, variant.protocol, configurers),
                lambda v=variant, s=service: _outbound_piece(source_tags, s, v, mesh, plugins, run),  # type: ignore[misc]
                Carry(frozenset({service})),
            )
            _merge(out, piece)
            for chain in piece.chains:
                base = names.transparent_outbound(service, variant.suffix)
                if vip is not None:
                    for port in ports:
                        lst.filter_chains.append(_matched(chain, f"{base}_vip_{port}", port, [vip], variant.plaintext_alpn))
                for port, addresses in sorted(direct.items()):
                    lst.filter_chains.append(_matched(chain, f"{base}_direct_{port}", port, addresses, variant.plaintext_alpn))
            if variant.plaintext_alpn:
                detect_ports.update(ports)
                detect_ports.update(direct)
    hosts = _external_chains(out, lst, mesh, table, plugins, run, tags_key, source_tags, configurers)
    settings = mesh.spec.transparent_proxy
    sni = any(a.domain is not None for a in settings.allow)
    lst.listener_filters.extend(_listener_filters(detect_ports, tls=sni))
    if settings.passthrough == "all" or settings.allow:
        out.packed.setdefault(CLUSTER, {})[names.PASSTHROUGH_CLUSTER] = pack(names.PASSTHROUGH_CLUSTER, passthrough_cluster())
    if settings.passthrough == "all":
        lst.default_filter_chain.CopyFrom(_passthrough_chain(names.PASSTHROUGH_CLUSTER))
    else:
        chain = _passthrough_chain(names.PASSTHROUGH_CLUSTER)
        chain_ports = [c.filter_chain_match.destination_port.value for c in lst.filter_chains]
        lst.filter_chains.extend(passthrough.allow_chains(settings.allow, chain, chain_ports))
        blocked = mesh.memoize(
            ("transparent blocked", tags_key, spec.transparent.outbound_port, configurers),
            lambda: _blocked_piece(source_tags, spec.transparent.outbound_port if spec.transparent else 0, mesh,
                                   plugins, run),
            Carry(frozenset()),
        )  # fmt: skip
        _merge(out, blocked)
        lst.default_filter_chain.CopyFrom(blocked.chains[0])
        lst.default_filter_chain.name = names.BLOCKED_LISTENER
    dns: dict[str, object] = {"range": settings.vip_range, "bare": settings.bare_names, "vips": dict(sorted(table.items()))}
    if hosts:
        dns["hosts"] = dict(sorted(hosts.items()))
    lst.metadata.filter_metadata[DNS_METADATA].update({"dns": json.dumps(dns, sort_keys=True)})
    return out


def _blocked_piece(source_tags: tuple[dict[str, str], ...], port: int, mesh: MeshSnapshot, plugins: Sequence[Plugin],
                   run: Run) -> _Piece:  # fmt: skip
    section = passthrough.blocked_section(source_tags, port, mesh, plugins, run)
    chains, rest = _chains_of(section.finalize())
    return _Piece(chains, rest, tuple(section.applied))


def _external_chains(out: _Assembled, lst: listener_pb2.Listener, mesh: MeshSnapshot, table: Mapping[str, str],
                     plugins: Sequence[Plugin], run: Run, tags_key: str, source_tags: tuple[dict[str, str], ...],
                     configurers: tuple[int, ...]) -> dict[str, str]:  # fmt: skip
    """A chain per ExternalService: its VIP (a host) or its address or CIDR, on its port (and
    80 for HTTP: ``http://api.example.com/`` with TLS originated by the sidecar). Returns the
    host names mesh DNS answers (host -> VIP)."""
    hosts: dict[str, str] = {}
    services = set(mesh.services())
    for name, es in sorted(external.external_services(mesh).items()):
        if name in services:
            continue  # a mesh service of that name wins (its instances are what callers reach)
        if es.host is not None:
            vip = table.get(name)
            if vip is None:
                continue  # no VIP yet: the allocator writes one, and the next render has it
            hosts[es.host] = vip
            prefixes, ports = [vip], sorted({es.port, *([HTTP_PORT] if es.protocol == "http" else [])})
        else:
            assert es.address is not None
            prefixes, ports = [es.address], [es.port]
        piece = mesh.memoize(
            ("transparent external", tags_key, name, configurers),
            lambda n=name: _outbound_piece(source_tags, n, DECLARED, mesh, plugins, run),  # type: ignore[misc]
            Carry(frozenset({name})),
        )
        _merge(out, piece)
        for chain in piece.chains:
            base = names.transparent_outbound(name)
            for port in ports:
                lst.filter_chains.append(_matched(chain, f"{base}_external_{port}", port, prefixes, ()))
    return hosts


def _merge(out: _Assembled, piece: _Piece) -> None:
    for type_url, items in piece.packed.items():
        slot = out.packed.setdefault(type_url, {})
        for p in items:
            prior = slot.get(p.name)
            if prior is not None and prior.digest != p.digest:
                raise TransparentRenderError(
                    f"two transparent sections render different '{p.name}' resources; check the policies of its service"
                )
            slot[p.name] = p
    out.applied.extend(piece.applied)


# -- inbound --------------------------------------------------------------------------


def _inbound_piece(dataplane: Resource, inbound: Inbound, variant: Variant, mesh: MeshSnapshot,
                   plugins: Sequence[Plugin], run: Run) -> _Piece:  # fmt: skip
    if variant.protocol:
        inbound = inbound.model_copy(update={"tags": {**inbound.tags, "protocol": variant.protocol}})
    section = inbound_section(dataplane, inbound, mesh)
    if variant.protocol:
        section.target = f"inbound {inbound.port} ({inbound.service}, detected {variant.protocol})"
        section.id = SectionId("sidecar", "inbound", inbound.port, f"detected-{variant.protocol}")
    _run_plugins(section, run, plugins, mesh, dataplane)
    _rename_clusters(section, inbound.service, variant.suffix)
    chains, rest = _chains_of(section.finalize())
    return _Piece(chains, rest, tuple(section.applied))


def inbound_listener(dataplane: Resource, mesh: MeshSnapshot, plugins: Sequence[Plugin], run: Run,
                     configurers: tuple[int, ...]) -> _Assembled:  # fmt: skip
    spec = dataplane.spec
    assert isinstance(spec, DataplaneSpec) and spec.transparent is not None
    lst = _capture_listener(names.TRANSPARENT_INBOUND_LISTENER, spec.transparent.inbound_port,
                            spec.transparent.ipv6, base_pb2.INBOUND)  # fmt: skip
    out = _Assembled(target="inbound (transparent)", listener=lst,
                     id=SectionId("sidecar", "transparent-inbound", spec.transparent.inbound_port))
    owner = (dataplane.name, dataplane.version)
    detect_ports: set[int] = set()
    for index, inbound in enumerate(spec.inbound):
        variants = DETECTED if "protocol" not in inbound.tags else (DECLARED,)
        for variant in variants:
            piece = mesh.memoize(
                ("transparent inbound", owner, index, variant.suffix, variant.protocol, configurers),
                lambda i=inbound, v=variant: _inbound_piece(dataplane, i, v, mesh, plugins, run),  # type: ignore[misc]
                Carry(frozenset({inbound.service}), owner),
            )
            _merge(out, piece)
            for chain in piece.chains:
                tls = chain.HasField("transport_socket")
                alpn = variant.tls_alpn if tls else variant.plaintext_alpn
                transport = "tls" if tls else ("raw_buffer" if variant.plaintext_alpn or len(variants) > 1 else "")
                if not tls and variant.plaintext_alpn:
                    detect_ports.add(inbound.port)
                lst.filter_chains.append(
                    _matched(chain, f"inbound_{inbound.port}_{chain.name}{'_' + variant.suffix if variant.suffix else ''}",
                             inbound.port, [], alpn, transport)
                )  # fmt: skip
    lst.listener_filters.extend(_listener_filters(detect_ports, tls=True))
    if mesh.spec.mtls.mode != "strict":  # a permissive migration keeps the host's other ports reachable
        lst.default_filter_chain.CopyFrom(_passthrough_chain("inbound_passthrough"))
        out.packed.setdefault(CLUSTER, {})[names.PASSTHROUGH_CLUSTER] = pack(names.PASSTHROUGH_CLUSTER, passthrough_cluster())
    return out


def parts(dataplane: Resource, mesh: MeshSnapshot, plugins: Sequence[Plugin], run: Run,
          finish: Callable[[Section], P], tags_key: str, source_tags: tuple[dict[str, str], ...]) -> list[P]:  # fmt: skip
    """The transparent dataplane's two capture listeners and what they send to."""
    spec = dataplane.spec
    assert isinstance(spec, DataplaneSpec)
    configurers = tuple(map(id, plugins))
    return [
        finish(inbound_listener(dataplane, mesh, plugins, run, configurers)),
        finish(outbound_listener(spec, mesh, plugins, run, tags_key, source_tags, configurers)),
    ]
