"""The floor: a bare grpc.aio ADS server, the least any Python control plane on grpc.aio can cost.

``python -m benchmarks.controlplane.floor --port P`` serves one fixed config (a cluster, its
endpoints, a listener, a route) to every stream, pre-serialized, and on ``push`` (a line on
stdin) sends every stream a new route version. No store, no rendering, no auth, plaintext:
what is left is grpc.aio's own cost per stream and per message, which the scenario measures
with the same simulator and compares with the real control plane.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator
from typing import Any

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"


def _any(msg: Message) -> any_pb2.Any:
    a = any_pb2.Any()
    a.Pack(msg)
    return a


def config(round_no: int) -> dict[str, list[any_pb2.Any]]:
    cluster = cluster_pb2.Cluster(name="svc", type=cluster_pb2.Cluster.EDS)
    cluster.eds_cluster_config.service_name = "svc"
    hcm = hcm_pb2.HttpConnectionManager(stat_prefix="out")
    hcm.rds.route_config_name = "route"
    listener = listener_pb2.Listener(name="out")
    listener.filter_chains.add().filters.add(
        name="envoy.filters.network.http_connection_manager", typed_config=_any(hcm)
    )
    route = route_pb2.RouteConfiguration(
        name="route", virtual_hosts=[route_components_pb2.VirtualHost(name=f"r{round_no}", domains=["*"])]
    )
    return {
        CLUSTER: [_any(cluster)],
        ENDPOINT: [_any(endpoint_pb2.ClusterLoadAssignment(cluster_name="svc"))],
        LISTENER: [_any(listener)],
        ROUTE: [_any(route)],
    }


class Bare:
    def __init__(self) -> None:
        self.version = 0
        self.encoded: dict[str, bytes] = {}
        self.streams: set[asyncio.Queue[Any]] = set()
        self.bump()

    def bump(self) -> None:
        self.version += 1
        for type_url, resources in config(self.version).items():
            msg = discovery_pb2.DiscoveryResponse(type_url=type_url, version_info=str(self.version))
            msg.resources.extend(resources)
            self.encoded[type_url] = msg.SerializeToString()

    async def stream(
        self, requests: AsyncIterator[discovery_pb2.DiscoveryRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        """Answer each request whose version is not the current one; pushes arrive via the queue."""
        inbox: asyncio.Queue[str | discovery_pb2.DiscoveryRequest | None] = asyncio.Queue()
        sent: dict[str, int] = {}
        open_request: set[str] = set()
        nonce = 0

        async def read() -> None:
            async for req in requests:
                inbox.put_nowait(req)
            inbox.put_nowait(None)

        reader = asyncio.create_task(read())
        self.streams.add(inbox)
        try:
            while (item := await inbox.get()) is not None:
                if isinstance(item, str):
                    wanted = [ROUTE] if ROUTE in open_request else []
                else:
                    open_request.add(item.type_url)
                    wanted = [item.type_url] if item.version_info != str(self.version) else []
                for type_url in wanted:
                    if sent.get(type_url) == self.version and not isinstance(item, str):
                        continue
                    nonce += 1
                    sent[type_url] = self.version
                    open_request.discard(type_url)
                    yield self.encoded[type_url] + b"*" + bytes([len(str(nonce))]) + str(nonce).encode()
        finally:
            self.streams.discard(inbox)
            reader.cancel()

    def push(self) -> int:
        self.bump()
        for inbox in self.streams:
            inbox.put_nowait("push")
        return len(self.streams)


async def serve(port: int) -> None:
    bare = Bare()
    server = grpc.aio.server(options=[("grpc.max_concurrent_streams", 100_000)])
    handler = grpc.method_handlers_generic_handler(
        "envoy.service.discovery.v3.AggregatedDiscoveryService",
        {
            "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
                bare.stream,
                request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
                response_serializer=lambda b: b,
            )
        },
    )
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print("ready", flush=True)
    while line := await reader.readline():
        if line.strip() == b"push":
            print(bare.push(), flush=True)
    await server.stop(0)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.controlplane.floor")
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
