"""Envoy's bootstrap for one dataplane: a pure function from the agent's config to typed protos.

The bootstrap holds only what Envoy needs before it can talk to the control plane:
its identity (node), its admin endpoint (a 0600 Unix socket), two static clusters (the
agent's xDS proxy and SDS server, both Unix sockets in the work dir) and limits. Everything
else arrives over ADS. It holds no credential: the agent's xDS proxy adds the dataplane token.
"""

from __future__ import annotations

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
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import any_pb2, duration_pb2, json_format
from google.protobuf.message import Message

from meshline.agent import metrics
from meshline.agent.config import AgentConfig
from meshline.core.versions import AGENT_VERSION_KEY, current
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


def _http2_options() -> dict[str, any_pb2.Any]:
    h2 = protocol_pb2.Http2ProtocolOptions()
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


def _local_cluster(name: str, socket: Path, connect_timeout_ms: int) -> cluster_pb2.Cluster:
    """A static HTTP/2 cluster of one Unix socket of the agent's."""
    c = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.STATIC,
        typed_extension_protocol_options=_http2_options(),
        load_assignment=_load_assignment(name, address_pb2.Address(pipe=address_pb2.Pipe(path=str(socket)))),
    )
    c.connect_timeout.FromMilliseconds(connect_timeout_ms)
    return c


def xds_cluster(config: AgentConfig) -> cluster_pb2.Cluster:
    """The control plane, as Envoy reaches it: the agent's xDS proxy on a Unix socket in the
    work dir. The proxy holds the dataplane token and the TLS connection to the control plane,
    so neither the bootstrap nor a config dump carries a credential (ADS, access logs and
    global rate limits all go this way)."""
    return _local_cluster(names.XDS_CLUSTER, config.xds_socket, XDS_CONNECT_TIMEOUT_MS)


def sds_cluster(config: AgentConfig) -> cluster_pb2.Cluster:
    """The agent's local SDS server, on a Unix socket in the work dir (HTTP/2 gRPC)."""
    return _local_cluster(names.SDS_CLUSTER, config.sds_path, SDS_CONNECT_TIMEOUT_MS)


def ads_config() -> config_source_pb2.ApiConfigSource:
    grpc = grpc_service_pb2.GrpcService(
        envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=names.XDS_CLUSTER)
    )
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
    node.metadata.fields[AGENT_VERSION_KEY].string_value = current()  # the compatibility rule
    if "zone" in config.tags:
        node.locality.zone = config.tags["zone"]
    return bootstrap_pb2.Bootstrap(
        node=node,
        admin=bootstrap_pb2.Admin(
            address=address_pb2.Address(pipe=address_pb2.Pipe(path=str(config.admin_socket), mode=0o600))
        ),
        dynamic_resources=bootstrap_pb2.Bootstrap.DynamicResources(
            ads_config=ads_config(), cds_config=_ads_source(), lds_config=_ads_source()
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
    """Write atomically, readable only by us (it holds no secret, but says where our sockets are)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(to_yaml(bootstrap))
    os.replace(tmp, path)
