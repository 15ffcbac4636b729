"""Constructors for the Envoy protos several generators and policies need."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import (
    address_pb2,
    base_pb2,
    config_source_pb2,
    grpc_service_pb2,
    health_check_pb2,
    protocol_pb2,
)
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import any_pb2, struct_pb2, wrappers_pb2
from google.protobuf.message import Message

from meshline.render.defaults import DEFAULTS, H2_PROTOCOLS
from meshline.render.mesh_snapshot import Endpoint
from meshline.xds import names
from meshline.xds.snapshot import pack_any

HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def packed(msg: Message) -> any_pb2.Any:
    return pack_any(msg)


def ads() -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(),
        resource_api_version=config_source_pb2.V3,
    )


def socket_address(address: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(socket_address=address_pb2.SocketAddress(address=address, port_value=port))


def sds(name: str) -> secret_pb2.SdsSecretConfig:
    """A secret served by the agent over its local SDS socket (static cluster in the bootstrap)."""
    return secret_pb2.SdsSecretConfig(
        name=name,
        sds_config=config_source_pb2.ConfigSource(
            resource_api_version=config_source_pb2.V3,
            api_config_source=config_source_pb2.ApiConfigSource(
                api_type=config_source_pb2.ApiConfigSource.GRPC,
                transport_api_version=config_source_pb2.V3,
                grpc_services=[
                    grpc_service_pb2.GrpcService(
                        envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=names.SDS_CLUSTER)
                    )
                ],
            ),
        ),
    )


def _common_tls(
    san_matchers: Sequence[common_pb2.SubjectAltNameMatcher], alpn: Iterable[str]
) -> tls_pb2.CommonTlsContext:
    return tls_pb2.CommonTlsContext(
        tls_params=common_pb2.TlsParameters(tls_minimum_protocol_version=common_pb2.TlsParameters.TLSv1_2),
        tls_certificate_sds_secret_configs=[sds(names.IDENTITY_SECRET)],
        combined_validation_context=tls_pb2.CommonTlsContext.CombinedCertificateValidationContext(
            default_validation_context=common_pb2.CertificateValidationContext(
                match_typed_subject_alt_names=list(san_matchers)
            ),
            validation_context_sds_secret_config=sds(names.TRUST_BUNDLE_SECRET),
        ),
        alpn_protocols=list(alpn),
    )


def _uri_san(matcher: string_pb2.StringMatcher) -> common_pb2.SubjectAltNameMatcher:
    return common_pb2.SubjectAltNameMatcher(san_type=common_pb2.SubjectAltNameMatcher.URI, matcher=matcher)


def upstream_mtls(identity: str, sni: str, protocol: str) -> base_pb2.TransportSocket:
    """Client side of sidecar-to-sidecar mTLS: present our identity, accept only ``identity``."""
    ctx = tls_pb2.UpstreamTlsContext(
        sni=sni,
        common_tls_context=_common_tls(
            [_uri_san(string_pb2.StringMatcher(exact=identity))],
            ["h2"] if protocol in H2_PROTOCOLS else ["http/1.1"] if protocol == "http" else [],
        ),
    )
    return base_pb2.TransportSocket(name="envoy.transport_sockets.tls", typed_config=packed(ctx))


def downstream_mtls(identity_prefix: str) -> base_pb2.TransportSocket:
    """Server side: require a client certificate from this mesh's CA with an identity in this mesh."""
    ctx = tls_pb2.DownstreamTlsContext(
        require_client_certificate=struct_bool(True),
        common_tls_context=_common_tls(
            [_uri_san(string_pb2.StringMatcher(prefix=identity_prefix))], ["h2", "http/1.1"]
        ),
    )
    return base_pb2.TransportSocket(name="envoy.transport_sockets.tls", typed_config=packed(ctx))


def struct_bool(value: bool) -> wrappers_pb2.BoolValue:
    return wrappers_pb2.BoolValue(value=value)


def tls_inspector() -> listener_components_pb2.ListenerFilter:
    return listener_components_pb2.ListenerFilter(
        name="envoy.filters.listener.tls_inspector", typed_config=packed(tls_inspector_pb2.TlsInspector())
    )


def set_protocol_options(
    cluster: cluster_pb2.Cluster, protocol: str, max_connection_duration: float | None = None
) -> None:
    opts = http_protocol_options_pb2.HttpProtocolOptions()
    if protocol in H2_PROTOCOLS:
        opts.explicit_http_config.http2_protocol_options.CopyFrom(protocol_pb2.Http2ProtocolOptions())
    elif protocol == "http":
        opts.explicit_http_config.http_protocol_options.CopyFrom(protocol_pb2.Http1ProtocolOptions())
    else:
        return
    opts.common_http_protocol_options.idle_timeout.FromTimedelta(DEFAULTS.idle)
    if max_connection_duration:
        opts.common_http_protocol_options.max_connection_duration.FromMilliseconds(
            int(max_connection_duration * 1000)
        )
    cluster.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].CopyFrom(packed(opts))


def eds_cluster(
    name: str,
    protocol: str,
    transport: base_pb2.TransportSocket | None,
    max_connection_duration: float | None = None,
) -> cluster_pb2.Cluster:
    c = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(eds_config=ads(), service_name=name),
        lb_policy=cluster_pb2.Cluster.ROUND_ROBIN,
    )
    c.connect_timeout.FromTimedelta(DEFAULTS.connect)
    if transport is not None:
        c.transport_socket.CopyFrom(transport)
    set_protocol_options(c, protocol, max_connection_duration)
    return c


def static_cluster(name: str, address: str, port: int, protocol: str) -> cluster_pb2.Cluster:
    c = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.STATIC,
        load_assignment=endpoint_pb2.ClusterLoadAssignment(
            cluster_name=name,
            endpoints=[
                endpoint_components_pb2.LocalityLbEndpoints(
                    lb_endpoints=[
                        endpoint_components_pb2.LbEndpoint(
                            endpoint=endpoint_components_pb2.Endpoint(address=socket_address(address, port))
                        )
                    ]
                )
            ],
        ),
    )
    c.connect_timeout.FromTimedelta(DEFAULTS.connect)
    set_protocol_options(c, protocol)
    return c


def load_assignment(name: str, endpoints: Iterable[Endpoint]) -> endpoint_pb2.ClusterLoadAssignment:
    """Endpoints grouped by zone (locality); tags go into metadata for subset matching.

    Other zones' endpoints (``Endpoint.remote``: a zone ingress) come at the next priority
    after this zone's, so callers stay in their zone while it has healthy instances and fail
    over when it has none (a LoadBalancer policy's ``localityAwareness`` re-ranks by zone)."""
    by_zone: dict[tuple[bool, str], list[endpoint_components_pb2.LbEndpoint]] = {}
    for ep in endpoints:
        if not ep.healthy:
            # Left out rather than sent as UNHEALTHY: Envoy's panic mode would route to
            # unhealthy hosts once fewer than half are healthy.
            continue
        meta = base_pb2.Metadata()
        meta.filter_metadata["envoy.lb"].update(dict(ep.tags))
        meta.filter_metadata["meshline"].update({"dataplane": ep.dataplane})
        lb = endpoint_components_pb2.LbEndpoint(
            endpoint=endpoint_components_pb2.Endpoint(address=socket_address(ep.address, ep.port)),
            health_status=health_check_pb2.HEALTHY,
            metadata=meta,
        )
        if ep.weight != 1:
            lb.load_balancing_weight.value = ep.weight
        by_zone.setdefault((ep.remote, ep.zone), []).append(lb)
    has_local = any(not remote for remote, _ in by_zone)
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=name,
        endpoints=[
            endpoint_components_pb2.LocalityLbEndpoints(
                locality=base_pb2.Locality(zone=zone), lb_endpoints=eps,
                priority=1 if remote and has_local else 0,
            )
            for (remote, zone), eps in sorted(by_zone.items())
        ],
    )


def hcm(stat_prefix: str) -> hcm_pb2.HttpConnectionManager:
    h = hcm_pb2.HttpConnectionManager(
        stat_prefix=names.stat_prefix(stat_prefix),
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        upgrade_configs=[hcm_pb2.HttpConnectionManager.UpgradeConfig(upgrade_type="websocket")],
        use_remote_address=struct_bool(False),
        normalize_path=struct_bool(True),
        merge_slashes=True,
    )
    h.common_http_protocol_options.idle_timeout.FromTimedelta(DEFAULTS.idle)
    h.stream_idle_timeout.FromTimedelta(DEFAULTS.stream_idle)
    return h


def tcp_proxy(stat_prefix: str, cluster: str) -> tcp_proxy_pb2.TcpProxy:
    return tcp_proxy_pb2.TcpProxy(stat_prefix=names.stat_prefix(stat_prefix), cluster=cluster)


def network_filter(name: str, msg: Message) -> listener_components_pb2.Filter:
    return listener_components_pb2.Filter(name=name, typed_config=packed(msg))


def listener(name: str, address: str, port: int) -> listener_pb2.Listener:
    return listener_pb2.Listener(
        name=name,
        address=socket_address(address, port),
        traffic_direction=base_pb2.UNSPECIFIED,
    )


def metadata_struct(values: dict[str, str]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(values)
    return s
