"""Timeout configurer: sets only the fields the winning policy names; the rest keep the base defaults."""

from __future__ import annotations

from datetime import timedelta

from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

from meshline.policies.common.sections import clusters, inherits_default, proto_duration, route_actions
from meshline.policies.timeout.api import KIND, TimeoutConf, TimeoutSpec
from meshline.render import envoy
from meshline.render.mesh_snapshot import MeshSnapshot
from meshline.render.policy_kind import Merge, PolicyKind, Resolved, record
from meshline.render.sections import OutboundSection


def _upstream_idle(cluster: cluster_pb2.Cluster, idle: timedelta) -> None:
    """Idle timeout of pooled upstream connections lives in the cluster's HTTP protocol options."""
    packed = cluster.typed_extension_protocol_options.get(envoy.HTTP_PROTOCOL_OPTIONS)
    if packed is None:
        return
    opts = http_protocol_options_pb2.HttpProtocolOptions()
    packed.Unpack(opts)
    opts.common_http_protocol_options.idle_timeout.CopyFrom(proto_duration(idle))
    cluster.typed_extension_protocol_options[envoy.HTTP_PROTOCOL_OPTIONS].CopyFrom(envoy.packed(opts))


def _configure_http(section: OutboundSection, conf: TimeoutConf) -> None:
    assert section.http is not None
    hcm = section.http.hcm
    if conf.idle_timeout is not None:
        hcm.common_http_protocol_options.idle_timeout.CopyFrom(proto_duration(conf.idle_timeout))
        for cluster in clusters(section):
            _upstream_idle(cluster, conf.idle_timeout)
    http = conf.http
    if http is None:
        return
    if http.stream_idle_timeout is not None:
        hcm.stream_idle_timeout.CopyFrom(proto_duration(http.stream_idle_timeout))
    for action in route_actions(section):
        if http.request_timeout is not None and inherits_default(section, action, "timeout"):
            action.timeout.CopyFrom(proto_duration(http.request_timeout))
        if http.max_stream_duration is not None:
            action.max_stream_duration.max_stream_duration.CopyFrom(proto_duration(http.max_stream_duration))


def _configure_tcp(section: OutboundSection, conf: TimeoutConf) -> None:
    tcp = section.tcp
    assert tcp is not None
    if conf.idle_timeout is not None:
        tcp.idle_timeout.CopyFrom(proto_duration(conf.idle_timeout))
    if conf.tcp is not None and conf.tcp.max_connection_duration is not None:
        if conf.tcp.max_connection_duration:
            tcp.max_downstream_connection_duration.CopyFrom(proto_duration(conf.tcp.max_connection_duration))
        else:
            tcp.ClearField("max_downstream_connection_duration")  # 0: unlimited (Envoy's "unset")


def configure(section: OutboundSection, resolved: Resolved[TimeoutSpec], mesh: MeshSnapshot) -> None:
    matched = resolved.best
    conf = matched.spec.conf
    if conf.connect_timeout is not None:
        for cluster in clusters(section):
            cluster.connect_timeout.CopyFrom(proto_duration(conf.connect_timeout))
    notes = []
    if section.http is not None:
        _configure_http(section, conf)
        if conf.tcp is not None:
            notes.append("tcp settings ignored: the service speaks " + section.protocol)
    elif section.tcp is not None:
        _configure_tcp(section, conf)
        if conf.http is not None:
            notes.append("http settings ignored: the service speaks tcp")
    record(section, matched, "; ".join(notes))


POLICY = PolicyKind(
    info=KIND,
    spec=TimeoutSpec,
    merge=Merge.MOST_SPECIFIC,
    shapes=frozenset({"route", "cluster", "listener"}),
    outbound=configure,
    # After routing: it may add subset clusters and routes this must also configure.
    after=("HTTPRoute", "TCPRoute"),
    explains=frozenset({"timeout"}),
)
