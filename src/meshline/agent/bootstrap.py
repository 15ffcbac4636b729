"""Envoy's bootstrap for one dataplane: a pure function from the agent's config to typed protos.

The bootstrap holds only what Envoy needs before it can talk to the control plane:
its identity (node), its admin endpoint, two static clusters (the control plane's ADS
server and the agent's local SDS socket) and limits. Everything else arrives over ADS.
"""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path

import yaml
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2, grpc_service_pb2, protocol_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.overload.v3 import overload_pb2
from envoy.extensions.resource_monitors.downstream_connections.v3 import downstream_connections_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import any_pb2, duration_pb2, json_format, wrappers_pb2
from google.protobuf.message import Message

from meshline.agent import metrics
from meshline.agent.config import AgentConfig
from meshline.xds import names

HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
# Envoy warns (and is exposed to connection floods) without a global connection limit.
MAX_DOWNSTREAM_CONNECTIONS = 50_000
XDS_CONNECT_TIMEOUT_MS = 1_000
SDS_CONNECT_TIMEOUT_MS = 1_000


def _packed(msg: Message) -> any_pb2.Any:
    a = any_pb2.Any()
    a.Pack(msg)
    return a


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _http2_options() -> dict[str, any_pb2.Any]:
    h2 = protocol_pb2.Http2ProtocolOptions()
    # HTTP/2 PINGs notice a dead control plane behind a NAT or a crashed host.
    h2.connection_keepalive.interval.FromSeconds(30)
    h2.connection_keepalive.timeout.FromSeconds(5)
    opts = http_protocol_options_pb2.HttpProtocolOptions(
        explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
            http2_protocol_options=h2
        )
    )
    return {HTTP_PROTOCOL_OPTIONS: _packed(opts)}


def _load_assignment(cluster: str, address: address_pb2.Address) -> endpoint_pb2.ClusterLoadAssignment:
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=cluster,
        endpoints=[
            endpoint_components_pb2.LocalityLbEndpoints(
                lb_endpoints=[
                    endpoint_components_pb2.LbEndpoint(endpoint=endpoint_components_pb2.Endpoint(address=address))
                ]
            )
        ],
    )


def xds_cluster(config: AgentConfig) -> cluster_pb2.Cluster:
    """The control plane's ADS server: HTTP/2, TCP keepalive, a short connect timeout."""
    c = cluster_pb2.Cluster(
        name=names.XDS_CLUSTER,
        type=cluster_pb2.Cluster.STATIC if _is_ip(config.xds_host) else cluster_pb2.Cluster.STRICT_DNS,
        typed_extension_protocol_options=_http2_options(),
        load_assignment=_load_assignment(
            names.XDS_CLUSTER,
            address_pb2.Address(
                socket_address=address_pb2.SocketAddress(address=config.xds_host, port_value=config.xds_port)
            ),
        ),
        upstream_connection_options=cluster_pb2.UpstreamConnectionOptions(
            tcp_keepalive=address_pb2.TcpKeepalive(
                keepalive_probes=wrappers_pb2.UInt32Value(value=3),
                keepalive_time=wrappers_pb2.UInt32Value(value=30),
                keepalive_interval=wrappers_pb2.UInt32Value(value=5),
            )
        ),
    )
    c.connect_timeout.FromMilliseconds(XDS_CONNECT_TIMEOUT_MS)
    if not _is_ip(config.xds_host):
        c.dns_lookup_family = cluster_pb2.Cluster.V4_PREFERRED
    if config.ca_file is not None:
        tls = tls_pb2.UpstreamTlsContext(
            sni=config.xds_host,
            common_tls_context=tls_pb2.CommonTlsContext(
                alpn_protocols=["h2"],
                validation_context=common_pb2.CertificateValidationContext(
                    trusted_ca=base_pb2.DataSource(filename=str(config.ca_file.resolve()))
                ),
            ),
        )
        c.transport_socket.CopyFrom(
            base_pb2.TransportSocket(name="envoy.transport_sockets.tls", typed_config=_packed(tls))
        )
    return c


def sds_cluster(config: AgentConfig) -> cluster_pb2.Cluster:
    """The agent's local SDS server, on a Unix socket in the work dir (HTTP/2 gRPC)."""
    c = cluster_pb2.Cluster(
        name=names.SDS_CLUSTER,
        type=cluster_pb2.Cluster.STATIC,
        typed_extension_protocol_options=_http2_options(),
        load_assignment=_load_assignment(
            names.SDS_CLUSTER, address_pb2.Address(pipe=address_pb2.Pipe(path=str(config.sds_path)))
        ),
    )
    c.connect_timeout.FromMilliseconds(SDS_CONNECT_TIMEOUT_MS)
    return c


def ads_config(config: AgentConfig) -> config_source_pb2.ApiConfigSource:
    grpc = grpc_service_pb2.GrpcService(
        envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=names.XDS_CLUSTER)
    )
    if config.token:
        grpc.initial_metadata.append(base_pb2.HeaderValue(key="authorization", value=f"Bearer {config.token}"))
    return config_source_pb2.ApiConfigSource(
        api_type=config_source_pb2.ApiConfigSource.GRPC,
        transport_api_version=config_source_pb2.V3,
        grpc_services=[grpc],
        set_node_on_first_message_only=True,
    )


def _ads_source() -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(), resource_api_version=config_source_pb2.V3
    )


def overload_manager() -> overload_pb2.OverloadManager:
    limit = downstream_connections_pb2.DownstreamConnectionsConfig(
        max_active_downstream_connections=MAX_DOWNSTREAM_CONNECTIONS
    )
    return overload_pb2.OverloadManager(
        resource_monitors=[
            overload_pb2.ResourceMonitor(
                name="envoy.resource_monitors.global_downstream_max_connections", typed_config=_packed(limit)
            )
        ]
    )


def build_bootstrap(config: AgentConfig) -> bootstrap_pb2.Bootstrap:
    node = base_pb2.Node(id=config.node_id, cluster=config.service)
    if "zone" in config.tags:
        node.locality.zone = config.tags["zone"]
    return bootstrap_pb2.Bootstrap(
        node=node,
        admin=bootstrap_pb2.Admin(
            address=address_pb2.Address(
                socket_address=address_pb2.SocketAddress(address="127.0.0.1", port_value=config.admin_port)
            )
        ),
        dynamic_resources=bootstrap_pb2.Bootstrap.DynamicResources(
            ads_config=ads_config(config), cds_config=_ads_source(), lds_config=_ads_source()
        ),
        static_resources=bootstrap_pb2.Bootstrap.StaticResources(
            clusters=[xds_cluster(config), sds_cluster(config)]
        ),
        overload_manager=overload_manager(),
        stats_config=metrics.stats_config(),
        stats_flush_interval=duration_pb2.Duration(seconds=metrics.STATS_FLUSH_INTERVAL_S),
    )


def to_yaml(bootstrap: bootstrap_pb2.Bootstrap) -> str:
    # via JSON text: MessageToDict returns OrderedDicts for Any fields, which safe_dump refuses
    data = json.loads(json_format.MessageToJson(bootstrap, preserving_proto_field_name=True))
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


def write_bootstrap(path: Path, bootstrap: bootstrap_pb2.Bootstrap) -> None:
    """Write atomically, readable only by us: it may hold the dataplane token."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(to_yaml(bootstrap))
    os.replace(tmp, path)
