"""Envoy's gRPC AccessLogService (envoy.service.accesslog.v3), served on the xDS port.

Sidecars stream their entries over the bootstrap's xDS cluster; the first message of a
stream names the node (``<mesh>.<dataplane>``). Entries from nodes that are not a
registered Dataplane are dropped (the stream carries no token; see docs/observability.md).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable

import grpc
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc

from meshline.telemetry.convert import from_http, from_tcp
from meshline.telemetry.intake import TelemetryIntake
from meshline.xds import names

log = logging.getLogger("meshline.telemetry")

# (mesh, dataplane) -> may this node send logs?
NodeCheck = Callable[[str, str], bool]


class AccessLogServicer(als_pb2_grpc.AccessLogServiceServicer):
    def __init__(self, intake: TelemetryIntake, known: NodeCheck) -> None:
        self.intake = intake
        self.known = known
        self.dropped = 0

    async def StreamAccessLogs(
        self,
        request_iterator: AsyncIterator[als_pb2.StreamAccessLogsMessage],
        context: grpc.aio.ServicerContext,
    ) -> als_pb2.StreamAccessLogsResponse:
        mesh = dataplane = ""
        try:
            async for msg in request_iterator:
                if msg.HasField("identifier") and msg.identifier.node.id:
                    try:
                        mesh, dataplane = names.parse_node_id(msg.identifier.node.id)
                    except ValueError:
                        mesh = dataplane = ""
                if not mesh or not self.known(mesh, dataplane):
                    self.dropped += len(msg.http_logs.log_entry) + len(msg.tcp_logs.log_entry)
                    continue
                records = [from_http(e, mesh, dataplane) for e in msg.http_logs.log_entry]
                records += [from_tcp(e, mesh, dataplane) for e in msg.tcp_logs.log_entry]
                self.intake.ingest(records)
        except grpc.aio.AioRpcError:
            pass  # the sidecar went away; it reopens a stream with its next entries
        except Exception:
            log.exception("access-log stream from %s.%s failed", mesh, dataplane)
        return als_pb2.StreamAccessLogsResponse()


def add_to_server(servicer: AccessLogServicer) -> Callable[[grpc.aio.Server], None]:
    def add(server: grpc.aio.Server) -> None:
        als_pb2_grpc.add_AccessLogServiceServicer_to_server(servicer, server)

    return add
