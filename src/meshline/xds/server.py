"""The thin grpc.aio adapter around :class:`~meshline.xds.stream.AdsStream`.

Responses go out as bytes (``Prepared.serialize``: resources encoded once and shared, version
and nonce appended), so the method is registered with an identity response serializer
instead of the generated servicer's ``DiscoveryResponse.SerializeToString``.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Protocol

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from meshline.core import versions
from meshline.xds.cache import SnapshotCache
from meshline.xds.snapshot import Snapshot
from meshline.xds.status import StatusRegistry
from meshline.xds.stream import Ack, AdsStream, Nack, Output, Sent

log = logging.getLogger("meshline.xds")


class StreamRefused(Exception):
    """Raised by an :data:`Authorizer` to end a stream with a gRPC status Envoy logs as is."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# Given a callback that ends the stream with a reason, arranges for it to be called if the
# stream's credentials stop being valid (a revoked token); returns the cancel of that.
Grant = Callable[[Callable[[str], None]], Callable[[], None]]
# Called with a node id when a stream identifies itself; raises StreamRefused to refuse it.
Authorizer = Callable[[str, grpc.aio.ServicerContext], Grant | None]


ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"


# -- who calls: one check for every service on the xDS port ------------------------------


class Caller(Protocol):
    """Who a call on the xDS port comes from, as its credential proves."""

    @property
    def mesh(self) -> str | None: ...  # None: any mesh (an admin credential)

    @property
    def service(self) -> str | None: ...  # None: any service of its mesh

    def describe(self) -> str: ...

    def refusal_for(self, node: str) -> str | None:
        """Why this caller may not speak for dataplane ``node`` (None: it may)."""

    def lapsed(self) -> str | None:
        """Why its credential stopped being valid since the call began (None: still valid)."""


# Maps a call (its metadata, peer and TLS session) to its caller; raises StreamRefused.
CallAuthenticator = Callable[[grpc.aio.ServicerContext], Caller]

_CALLER: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("meshline_xds_caller", default=None)


def current_caller() -> Caller | None:
    """The caller of the call being handled (each call runs in its own task), as
    :class:`AuthenticatingInterceptor` found it; None on a server without authentication
    (``Settings.auth`` off: the local demo)."""
    return _CALLER.get()


class AuthenticatingInterceptor(grpc.aio.ServerInterceptor):
    """Every method of every service on the server authenticates its caller before its
    handler runs: a service added later cannot forget to. Refusals end the call with the
    authenticator's status (UNAUTHENTICATED / PERMISSION_DENIED) before a message is read."""

    def __init__(self, authenticate: CallAuthenticator) -> None:
        self.authenticate = authenticate

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler  # an unknown method: gRPC answers UNIMPLEMENTED
        kind = _KINDS[(handler.request_streaming, handler.response_streaming)]
        behaviour = getattr(handler, kind)
        return _MAKERS[kind](
            self._guard(behaviour),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _guard(self, behaviour: Callable[..., Any]) -> Callable[..., Any]:
        admit = self._admit
        if inspect.isasyncgenfunction(behaviour):

            async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                await admit(context)
                async for item in behaviour(request, context):
                    yield item

            return stream
        if not inspect.iscoroutinefunction(behaviour):
            raise TypeError(f"{behaviour!r}: handlers on the xDS port must be coroutines or async generators")

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await admit(context)
            return await behaviour(request, context)

        return call

    async def _admit(self, context: grpc.aio.ServicerContext) -> None:
        try:
            caller = self.authenticate(context)
        except StreamRefused as refused:
            await context.abort(refused.code, refused.message)
        _CALLER.set(caller)


_KINDS = {
    (False, False): "unary_unary",
    (False, True): "unary_stream",
    (True, False): "stream_unary",
    (True, True): "stream_stream",
}
_MAKERS: dict[str, Callable[..., grpc.RpcMethodHandler]] = {
    "unary_unary": grpc.unary_unary_rpc_method_handler,
    "unary_stream": grpc.unary_stream_rpc_method_handler,
    "stream_unary": grpc.stream_unary_rpc_method_handler,
    "stream_stream": grpc.stream_stream_rpc_method_handler,
}


def _as_is(data: bytes) -> bytes:
    return data


def _agent_version(first: discovery_pb2.DiscoveryRequest) -> str | None:
    """The agent's version from Envoy's node metadata (None: it sent none)."""
    field = first.node.metadata.fields.get(versions.AGENT_VERSION_KEY)
    return field.string_value if field is not None and field.WhichOneof("kind") == "string_value" else None


class AdsServicer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    def __init__(
        self,
        cache: SnapshotCache,
        status: StatusRegistry,
        authorize: Authorizer | None = None,
        on_connect: Callable[[str], None] | None = None,
        on_disconnect: Callable[[str], None] | None = None,
        version: Callable[[], str] = versions.current,
    ) -> None:
        self.version = version  # this control plane's, for the compatibility rule
        self.cache = cache
        self.status = status
        self.authorize = authorize
        self.on_connect = on_connect
        self.on_disconnect = on_disconnect

    def _record(self, node: str, out: Output) -> None:
        st = self.status.get(node)
        now = time.time()
        for ev in out.events:
            ts = st.type(ev.type_url)
            if isinstance(ev, Sent):
                ts.sent, ts.sent_at, ts.pushes = ev.version, now, ts.pushes + 1
            elif isinstance(ev, Ack):
                ts.acked, ts.acked_at = ev.version, now
            elif isinstance(ev, Nack):
                ts.nack, ts.nack_version, ts.nack_at = ev.message, ev.version, now
                st.nacks += 1
                log.warning(
                    "%s rejected %s version %s: %s",
                    node,
                    ev.type_url.rsplit(".", 1)[-1],
                    ev.version,
                    ev.message,
                )
        if out.events:
            self.status.changed(node)

    async def StreamAggregatedResources(
        self,
        request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[bytes]:
        """One Envoy's stream: requests and snapshot updates go straight into its state machine
        (requests in a reader task, updates in the cache's callback); this generator only sends
        what comes out, in order. Per push one task wakes up (this one), per ACK one (the reader)."""
        stream = AdsStream()
        try:
            first = await anext(aiter(request_iterator))
        except (StopAsyncIteration, grpc.aio.AioRpcError):
            return
        stream.receive(first)  # learns the node; answered once a snapshot is known (open request)
        node = stream.node_id
        if not node:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "first request must carry node.id")
        agent_version = _agent_version(first)
        refused = versions.refusal(self.version(), agent_version)
        if refused is not None:
            log.warning("refused the xDS stream of %s: %s", node, refused)
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, refused)
        grant: Grant | None = None
        if self.authorize is not None:
            try:
                grant = self.authorize(node, context)
            except StreamRefused as refused:
                await context.abort(refused.code, refused.message)
        outbox: deque[bytes] = deque()
        wake = asyncio.Event()
        ended = False
        revoked = ""

        def end_revoked(reason: str) -> None:
            nonlocal ended, revoked
            revoked, ended = reason, True
            wake.set()

        def emit(out: Output) -> None:
            self._record(node, out)
            if out.prepared:
                outbox.extend(p.serialize() for p in out.prepared)
                wake.set()

        def on_snapshot(snap: Snapshot) -> None:
            nonlocal ended
            try:
                emit(stream.update(snap))
            except Exception:  # end this stream, not the reconciler that delivered the snapshot
                log.exception("xDS stream for %s failed on a new snapshot", node)
                ended = True
                wake.set()

        async def read() -> None:
            nonlocal ended
            try:
                async for req in request_iterator:
                    emit(stream.receive(req))
            except (asyncio.CancelledError, grpc.aio.AioRpcError):
                pass
            finally:
                ended = True
                wake.set()

        self.status.get(node).agent_version = agent_version or versions.UNSENT
        self.status.connected(node)
        if self.on_connect is not None:
            self.on_connect(node)
        cancel_watch = self.cache.watch(node, on_snapshot)
        cancel_grant = grant(end_revoked) if grant is not None else None
        reader = asyncio.create_task(read())
        try:
            snap = self.cache.get(node)
            if snap is not None:
                on_snapshot(snap)
            while True:
                while outbox:
                    yield outbox.popleft()
                if ended:
                    if revoked:
                        log.warning("xDS stream for %s ended: %s", node, revoked)
                        await context.abort(grpc.StatusCode.UNAUTHENTICATED, revoked)
                    return
                wake.clear()  # nothing awaited since the checks above: no wake-up is lost
                await wake.wait()
        finally:
            reader.cancel()
            cancel_watch()
            if cancel_grant is not None:
                cancel_grant()
            self.status.disconnected(node)
            if self.on_disconnect is not None:
                self.on_disconnect(node)


BASE_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.http2.max_pings_without_data", 0),
    # TLS records of at most 4 KB: the per-connection frame buffers shrink from 2 x 16 KB,
    # about 18 KB less per sidecar (measured with 1,000 streams); xDS messages are small.
    ("grpc.tsi.max_frame_size", 4096),
)


async def start_server(
    servicer: AdsServicer,
    address: str,
    credentials: grpc.ServerCredentials | None = None,
    extra: Callable[[grpc.aio.Server], None] | None = None,
    *,
    authenticate: CallAuthenticator | None = None,
    options: Sequence[tuple[str, int]] = (),
) -> tuple[grpc.aio.Server, int]:
    """The xDS port: ADS plus the services ``extra`` adds, all behind ``authenticate`` when
    set; ``options`` are the connection limits (see ``controlplane.limits``)."""
    interceptors = [AuthenticatingInterceptor(authenticate)] if authenticate is not None else []
    server = grpc.aio.server(interceptors=interceptors, options=[*BASE_OPTIONS, *options])
    handler = grpc.method_handlers_generic_handler(
        ADS_SERVICE,
        {
            "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
                servicer.StreamAggregatedResources,
                request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
                response_serializer=_as_is,
            )
        },
    )
    server.add_generic_rpc_handlers((handler,))
    if extra is not None:
        extra(server)
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen for xDS on {address}; is the port in use?")
    await server.start()
    return server, port
