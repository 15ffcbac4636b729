"""The render step that makes every request visible: access loggers, tracing and the
context logs need (who called, which policies shaped the traffic).

Runs after every policy plugin (highest ``order``) on each section:

* outbound HTTP routes set ``x-meshline-source: <caller's service>`` so the callee's sidecar
  can name the caller even without mTLS (a claim: with mTLS strict the inbound removes it, and
  identity always comes from the caller's certificate);
* clusters and routes get ``meshline`` metadata: the policies applied to the section (from
  its Applied records; a cluster behind routes names only the cluster-level ones) and the
  route timeout; logs and spans
  pick these up, so an entry explains itself without the control plane;
* every HTTP connection manager and TCP proxy gets the mesh's access loggers (gRPC stream
  to the control plane and/or a JSON-lines file) and, when the mesh traces, the
  OpenTelemetry tracer plus the collector's cluster.

It is not a user policy (no kind users apply): :data:`PLUGIN` is added to the reconciler by
``server.factory`` together with the telemetry intake it streams to.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_pb2

from meshline.core.dataplane import DataplaneSpec
from meshline.core.mesh import MeshLogging, MeshSpec
from meshline.core.resource import KindInfo, Resource
from meshline.render.mesh_snapshot import WATCH_ALL, MeshSnapshot
from meshline.render.plugins import Plugin
from meshline.render.sections import InboundSection, OutboundSection, Section
from meshline.telemetry import envoy_config as cfg
from meshline.telemetry import tags as t
from meshline.xds import names

# After every policy (they add Applied records and routes this step annotates).
DEFAULT_ROUTE_TIMEOUT_MS = 15_000  # Envoy's route timeout when a route sets none

# Names this step in render errors ("policy Telemetry on outbound ... failed"); never registered
# as a resource kind.
KIND = KindInfo(
    kind="Telemetry",
    plural="telemetry",
    spec=MeshLogging,
    summary="Access logs and tracing from the Mesh's logging/tracing settings (not a resource)",
)


def _enabled(spec: MeshSpec) -> bool:
    return bool(spec.logging.stream or spec.logging.file or spec.tracing)


def _watched(mesh: MeshSnapshot, *services: str) -> bool:
    """A live tap watches one of these services (or the whole mesh): stream every entry
    (nothing to mark when the mesh streams every success anyway)."""
    watched = mesh.watched
    if not watched or mesh.spec.logging.successes >= 100:
        return False
    return WATCH_ALL in watched or any(s in watched for s in services)


def _services(tag_sets: tuple[Mapping[str, str], ...]) -> str:
    return ",".join(sorted({tags["service"] for tags in tag_sets if "service" in tags}))


def _tag(tag_sets: tuple[Mapping[str, str], ...], name: str) -> str:
    return ",".join(sorted({tags[name] for tags in tag_sets if name in tags}))


# Kinds that shape routes and HTTP filters, never clusters.
ROUTE_LEVEL_KINDS = frozenset({"HTTPRoute", "FaultInjection", "RateLimit", "TrafficPermission"})


def _policies(section: Section, skip: frozenset[str] = frozenset()) -> str:
    return ",".join(sorted({f"{a.kind}/{a.name}" for a in section.applied if a.kind not in skip}))


def _mark_watched(route: route_pb2.Route, watched: bool) -> None:
    """A caller's route tells the callee's sidecar that a tap watches the call (the callee
    cannot know a tap on its caller, and its own routes are part of its listener); when not
    watched it drops the header, so an app or an outside client cannot ask for streaming."""
    if watched:
        route.request_headers_to_add.append(base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key=t.WATCH_HEADER, value="1"),
            append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD))
    else:
        route.request_headers_to_remove.append(t.WATCH_HEADER)


def _annotate_routes(rc: route_pb2.RouteConfiguration, policies: str, watched: bool, caller: bool) -> None:
    for vhost in rc.virtual_hosts:
        for route in vhost.routes:
            if caller and route.HasField("route"):
                _mark_watched(route, watched)
            meta: dict[str, str] = {}
            if policies:
                meta[t.META_POLICIES] = policies
            if route.HasField("route"):
                action = route.route
                timeout = action.timeout.ToMilliseconds() if action.HasField("timeout") else DEFAULT_ROUTE_TIMEOUT_MS
                meta[t.META_TIMEOUT_MS] = str(timeout)
                retry = action.retry_policy if action.HasField("retry_policy") else vhost.retry_policy
                if retry.HasField("per_try_timeout"):
                    meta[t.META_PER_TRY_TIMEOUT_MS] = str(retry.per_try_timeout.ToMilliseconds())
            if meta:
                route.metadata.filter_metadata[t.META].update(meta)


def _annotate(section: Section, routes: list[route_pb2.RouteConfiguration], watched: bool,
              caller: bool = False) -> None:
    policies = _policies(section)
    # With routes (HTTP), a request's log names the route's policies too, so a cluster names
    # only those that configure clusters: adding an HTTPRoute or a fault then changes routes
    # alone, and does not re-push (and re-warm, dropping pooled connections) every caller's cluster.
    cluster_policies = _policies(section, skip=ROUTE_LEVEL_KINDS) if routes else policies
    for cluster in section.clusters.values():
        if cluster_policies:
            cluster.metadata.filter_metadata[t.META].update({t.META_POLICIES: cluster_policies})
    for rc in routes:
        _annotate_routes(rc, policies, watched, caller)


def _loggers(info: cfg.SectionInfo, spec: MeshSpec, watched: bool = False) -> list[accesslog_pb2.AccessLog]:
    loggers = []
    if spec.logging.stream:
        successes = 100.0 if watched else spec.logging.successes
        loggers.append(cfg.grpc_access_log(info, successes, traced=spec.tracing is not None))
    if spec.logging.file:
        loggers.append(cfg.file_access_log(spec.logging.file, info))
    return loggers


def _add_observers(section: Section, info: cfg.SectionInfo, spec: MeshSpec, watched: bool = False) -> None:
    """``watched``: a tap watches this (inbound) section: every entry streamed. A caller's
    sections never need it: their routes mark a watched request (cfg.stream_filter)."""
    # a connection is logged when it closes (a gateway's TCP and TLS-passthrough chains too)
    tcp = section.tcp_proxies()
    if tcp:
        tcp_loggers = _loggers(dataclasses.replace(info, protocol="tcp"), spec)
        for proxy in tcp:
            proxy.access_log.extend(tcp_loggers)
    if section.http is not None:
        section.http.hcm.access_log.extend(_loggers(info, spec, watched))
        if spec.tracing is not None:
            section.http.hcm.tracing.CopyFrom(cfg.tracing(info, spec.tracing))
            section.clusters[names.TRACING_CLUSTER] = cfg.tracing_cluster(spec.tracing)
            # Envoy names spans and picks their kind (client/server) from the listener direction.
            section.listener.traffic_direction = (
                base_pb2.OUTBOUND if info.direction == "outbound" else base_pb2.INBOUND
            )


def _source_header(section: OutboundSection) -> None:
    source = _services(section.source_tags)
    if not source:
        return
    for rc in section.routes.values():
        rc.request_headers_to_add.append(
            base_pb2.HeaderValueOption(
                header=base_pb2.HeaderValue(key=t.SOURCE_HEADER, value=source),
                append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
            )
        )


def configure_outbound(section: OutboundSection, mesh: MeshSnapshot) -> None:
    if section.http is not None:
        _source_header(section)
    spec = mesh.spec
    if not _enabled(spec):
        return
    source = _services(section.source_tags)
    _annotate(section, list(section.routes.values()), _watched(mesh, *source.split(","), section.service),
              caller=True)
    info = cfg.SectionInfo(
        listener=section.listener.name,
        direction="outbound",
        protocol="http" if section.http is not None else "tcp",
        section=str(section.section_id),
        mesh=mesh.name,
        service=source,
        version=_tag(section.source_tags, "version"),
        source=source,
        destination=section.service,
    )
    _add_observers(section, info, spec)


def _configure_gateway(section: InboundSection, dataplane: Resource, mesh: MeshSnapshot) -> None:
    """A gateway's entry listener logs each request as a call from the gateway's service to the
    service its route reached (the cluster says which): the callee's sidecar logs the other half,
    with the same request id, and the outside caller is the gateway's own caller."""
    inbound = section.inbound
    if not _enabled(mesh.spec) or inbound is None:
        return
    # the generator named each cluster's service; its routes reach many: it streams everything
    # while any tap of the mesh is open
    _annotate(section, section.route_configs(), bool(mesh.watched), caller=True)
    info = cfg.SectionInfo(
        listener=section.listener.name,
        direction="outbound",
        protocol="http" if section.http is not None else "tcp",
        section=str(section.section_id),
        mesh=mesh.name,
        service=inbound.service,
        version=inbound.tags.get("version", ""),
        source=inbound.service,
    )
    _add_observers(section, info, mesh.spec)


def configure_inbound(section: InboundSection, dataplane: Resource, mesh: MeshSnapshot) -> None:
    if section.section_id.proxy == "gateway":
        _configure_gateway(section, dataplane, mesh)
        return
    spec = mesh.spec
    if section.route is not None and spec.mtls.mode == "strict":
        # Every caller has a verified certificate, which names it (logs, spans, XFCC): a
        # caller-written x-meshline-source could only lie, so the app never gets one.
        section.route.request_headers_to_remove.append(t.SOURCE_HEADER)
    inbound = section.inbound
    if not _enabled(spec) or inbound is None:
        return
    assert isinstance(dataplane.spec, DataplaneSpec)
    watched = _watched(mesh, inbound.service)
    _annotate(section, section.route_configs(), watched)
    info = cfg.SectionInfo(
        listener=section.listener.name,
        direction="inbound",
        protocol="http" if section.http is not None else "tcp",
        section=str(section.section_id),
        mesh=mesh.name,
        service=inbound.service,
        version=inbound.tags.get("version", ""),
        destination=inbound.service,
        destination_version=inbound.tags.get("version", ""),
        destination_zone=inbound.tags.get("zone", ""),
        destination_instance=dataplane.name,
    )
    # inbound routes are inline in the listener: a tap replaces it either way
    _add_observers(section, info, spec, watched)


# on_gateway: a gateway's entry listeners log too (tap and explain see requests as they enter the mesh)
PLUGIN = Plugin(kind=KIND, outbound=configure_outbound, inbound=configure_inbound, on_gateway=True)
