"""Envoy's gRPC AccessLogService (envoy.service.accesslog.v3), served on the xDS port.

Sidecars stream their entries over the bootstrap's xDS cluster, which adds the dataplane
token to every stream; the port's interceptor authenticates it like ADS. The first message
of a stream names the node (``<mesh>.<dataplane>``). Entries are taken only for what the
stream's credential may speak for (docs/observability.md, "Who may report"):

* the node must be a registered Dataplane the caller may act as (the same check as ADS:
  a dataplane token for service A cannot report as a dataplane of service B);
* each entry must be that dataplane's own side of a request: an outbound entry's source,
  an inbound entry's destination, is one of the services the dataplane serves.

Everything else is dropped, counted per reason in the mesh's stats (``dropped``) and logged
at most once per 10 s. A stream whose token is revoked or expires is ended.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable

import grpc
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc

from meshline.core.ratelog import RateLimitedLog
from meshline.core.slices import Slices
from meshline.telemetry.convert import from_http, from_tcp
from meshline.telemetry.intake import TelemetryIntake
from meshline.telemetry.record import OUTBOUND, LogRecord
from meshline.xds import names
from meshline.xds.server import Caller, current_caller

log = logging.getLogger("meshline.telemetry")

# (mesh, dataplane) -> the services it serves (None: no such registered dataplane)
ServicesOf = Callable[[str, str], frozenset[str] | None]

NOT_REGISTERED = "not-registered"  # the node is no registered Dataplane
NOT_ITS_NODE = "not-its-node"  # the credential may not speak for that node
NOT_ITS_SERVICE = "not-its-service"  # an entry about another service's side of a request
NO_NODE = "no-node"  # entries before the stream said which node it is


def own_services(r: LogRecord) -> set[str]:
    """The services a record speaks for: the caller's on the outbound side, else the callee's."""
    own = r.source if r.direction == OUTBOUND else r.destination
    return set(own.split(","))  # a sidecar of several services names them all, comma-separated


class AccessLogServicer(als_pb2_grpc.AccessLogServiceServicer):
    def __init__(self, intake: TelemetryIntake, services_of: ServicesOf) -> None:
        self.intake = intake
        self.services_of = services_of
        self.unattributed = 0  # dropped entries of no registered mesh (not in any mesh's stats)
        self._log = RateLimitedLog(log)

    async def StreamAccessLogs(
        self,
        request_iterator: AsyncIterator[als_pb2.StreamAccessLogsMessage],
        context: grpc.aio.ServicerContext,
    ) -> als_pb2.StreamAccessLogsResponse:
        caller = current_caller()
        who = caller.describe() if caller is not None else context.peer()
        mesh = dataplane = ""
        services: frozenset[str] | None = None
        refusal = NO_NODE
        try:
            async for msg in request_iterator:
                lapsed = caller.lapsed() if caller is not None else None
                if lapsed is not None:
                    await context.abort(grpc.StatusCode.UNAUTHENTICATED, lapsed)
                if msg.HasField("identifier") and msg.identifier.node.id:
                    node = msg.identifier.node.id
                    mesh, dataplane, services, refusal = self._identify(node, caller)
                    if refusal:
                        self._log.warning(refusal, "access logs from %s for node %r dropped: %s", who, node[:200], refusal)
                n = len(msg.http_logs.log_entry) + len(msg.tcp_logs.log_entry)
                if services is None:
                    self._drop(mesh, refusal, n)
                    continue
                foreign = await self._take(msg, mesh, dataplane, services)
                if foreign:
                    self._drop(mesh, NOT_ITS_SERVICE, foreign)
                    self._log.warning(
                        NOT_ITS_SERVICE, "access logs from %s: dropped entries about services %s.%s does not serve",
                        who, mesh, dataplane,
                    )  # fmt: skip
        except grpc.aio.AioRpcError:
            pass  # the sidecar went away; it reopens a stream with its next entries
        except grpc.aio.AbortError:
            raise
        except Exception as err:  # a bad entry ends its stream: a line per 10 s, not a traceback each
            self._log.warning("failed", "access-log stream from %s for %s.%s failed: %r", who, mesh, dataplane, err)
        return als_pb2.StreamAccessLogsResponse()

    async def _take(
        self, msg: als_pb2.StreamAccessLogsMessage, mesh: str, dataplane: str, services: frozenset[str]
    ) -> int:
        """Ingest the dataplane's own entries of one message, giving the loop back every few
        milliseconds (a message may hold thousands); returns how many were someone else's."""
        slices = Slices()
        own: list[LogRecord] = []
        foreign = 0
        entries = [(from_http, e) for e in msg.http_logs.log_entry] + [(from_tcp, e) for e in msg.tcp_logs.log_entry]
        for convert, e in entries:
            r = convert(e, mesh, dataplane)
            if own_services(r) <= services:
                own.append(r)
            else:
                foreign += 1
            if slices.due():
                self.intake.ingest(own)
                own = []
                await slices.pause()
        self.intake.ingest(own)
        return foreign

    def _identify(self, node: str, caller: Caller | None) -> tuple[str, str, frozenset[str] | None, str]:
        """(mesh, dataplane, its services or None, why refused or "")."""
        try:
            mesh, dataplane = names.parse_node_id(node)
        except ValueError:
            return "", "", None, NOT_REGISTERED
        services = self.services_of(mesh, dataplane)
        if services is None:
            return mesh, dataplane, None, NOT_REGISTERED
        why = caller.refusal_for(node) if caller is not None else None
        if why is not None:
            return mesh, dataplane, None, NOT_ITS_NODE
        return mesh, dataplane, services, ""

    def _drop(self, mesh: str, reason: str, n: int) -> None:
        if not n:
            return
        if mesh and reason != NOT_REGISTERED:  # a registered mesh: its owners see the count
            self.intake.note_dropped(mesh, reason, n)
        else:
            self.unattributed += n


def add_to_server(servicer: AccessLogServicer) -> Callable[[grpc.aio.Server], None]:
    def add(server: grpc.aio.Server) -> None:
        als_pb2_grpc.add_AccessLogServiceServicer_to_server(servicer, server)

    return add
