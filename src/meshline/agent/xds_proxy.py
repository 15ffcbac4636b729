"""The agent's xDS proxy: Envoy's only way to the control plane, and the only holder of the
dataplane token on the data path.

Envoy's bootstrap points its control-plane cluster (``names.XDS_CLUSTER``) at a 0600 Unix
socket in the agent's work dir and carries no credential. Each gRPC call Envoy makes there
(ADS, access logs, global rate limits) is forwarded to the control plane over TLS pinned to
the control-plane CA, with ``authorization: Bearer <dataplane token>`` added. So nothing
Envoy holds (its bootstrap, its memory, a config dump) can be replayed against the API or
the CA, and revoking the token still ends the sidecar's streams (the control plane ends the
upstream call; the proxy ends Envoy's with the same status).

Messages are forwarded as bytes, unparsed; one upstream call per Envoy call, ended together.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

import grpc

from meshline.agent.config import AgentConfig
from meshline.core.unix_sockets import serve_grpc

log = logging.getLogger("meshline.agent.xds")

# What Envoy calls on the control plane through its xDS cluster (see xds/names.py).
FORWARDED = {
    "envoy.service.discovery.v3.AggregatedDiscoveryService": "StreamAggregatedResources",
    "envoy.service.accesslog.v3.AccessLogService": "StreamAccessLogs",
    "envoy.service.ratelimit.v3.RateLimitService": "ShouldRateLimit",
}
MAX_CONFIG_BYTES = 256 * 1024 * 1024  # one DiscoveryResponse from the control plane
MAX_ENVOY_MESSAGE_BYTES = 16 * 1024 * 1024  # one request from Envoy (access-log batches are ~16 KB)
# Upstream HTTP/2 PINGs notice a control plane that vanished without closing the connection
# (the control plane's gRPC server allows one per 20 s, see xds/server.py).
KEEPALIVE_MS = 30_000
KEEPALIVE_TIMEOUT_MS = 5_000
# The channel's reconnect backoff (gRPC's own default grows to 120 s): kept close to what
# Envoy did when it dialled the control plane itself, so a restarted control plane is
# reached again within seconds.
RECONNECT_MIN_MS = 250
RECONNECT_MAX_MS = 5_000
QUIET = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)  # a control plane restarting


def channel_target(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def upstream_channel(config: AgentConfig) -> grpc.aio.Channel:
    target = channel_target(config.xds_host, config.xds_port)
    options = [
        ("grpc.keepalive_time_ms", KEEPALIVE_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.http2.max_pings_without_data", 0),  # ADS streams are idle between pushes
        ("grpc.keepalive_permit_without_calls", 0),
        ("grpc.initial_reconnect_backoff_ms", RECONNECT_MIN_MS),
        ("grpc.min_reconnect_backoff_ms", RECONNECT_MIN_MS),
        ("grpc.max_reconnect_backoff_ms", RECONNECT_MAX_MS),
        ("grpc.max_receive_message_length", MAX_CONFIG_BYTES),
        ("grpc.enable_retries", 0),
    ]
    ca = config.xds_ca
    if ca is None:
        return grpc.aio.insecure_channel(target, options=options)
    credentials = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
    return grpc.aio.secure_channel(target, credentials, options=options)


class XdsProxy:
    """A ``LocalService`` of the agent: started before Envoy, stopped after it."""

    name = "xds-proxy"

    def __init__(self) -> None:
        self._server: grpc.aio.Server | None = None
        self._channel: grpc.aio.Channel | None = None
        self._metadata: tuple[tuple[str, str], ...] = ()
        self.last_error = ""  # the control plane's last refusal, as Envoy also got it
        self.calls = 0  # Envoy's calls forwarded so far
        # Called with each ADS message the control plane sends Envoy (the mesh DNS table reads
        # the transparent listener there); must be quick and must not raise.
        self.config_observers: list[Callable[[bytes], None]] = []

    async def start(self, config: AgentConfig) -> None:
        self._metadata = (("authorization", f"Bearer {config.token}"),) if config.token else ()
        self._channel = upstream_channel(config)
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", MAX_ENVOY_MESSAGE_BYTES)])
        handlers = [
            grpc.method_handlers_generic_handler(
                service, {method: grpc.stream_stream_rpc_method_handler(self._forwarder(f"/{service}/{method}"))}
            )
            for service, method in FORWARDED.items()
        ]
        server.add_generic_rpc_handlers(handlers)
        await serve_grpc(server, config.xds_socket)
        self._server = server

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=0.2)
            self._server = None
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    def _forwarder(
        self, method: str
    ) -> Callable[[AsyncIterator[bytes], grpc.aio.ServicerContext], AsyncIterator[bytes]]:
        """One handler per method: the wire does not say whether a call is unary or streaming,
        so every call is forwarded as a bidirectional stream of raw messages."""

        async def forward(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
            assert self._channel is not None
            self.calls += 1
            call = self._channel.stream_stream(method)(metadata=self._metadata)
            pump = asyncio.create_task(self._pump(requests, call))
            observers = self.config_observers if method.endswith("/StreamAggregatedResources") else []
            try:
                async for message in call:
                    for observe in observers:
                        observe(message)
                    yield message
            except grpc.aio.AioRpcError as err:
                self._ended(method, err)
                await context.abort(err.code(), err.details() or "")
            finally:
                pump.cancel()
                call.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pump

        return forward

    @staticmethod
    async def _pump(requests: AsyncIterator[bytes], call: grpc.aio.StreamStreamCall) -> None:
        """Envoy's messages to the control plane, until Envoy half-closes or either side ends."""
        try:
            async for message in requests:
                await call.write(message)
            await call.done_writing()
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            pass  # the call has ended; its status reaches Envoy from the response side

    def _ended(self, method: str, err: grpc.aio.AioRpcError) -> None:
        why = f"{err.code().name}: {err.details()}"
        if err.code() not in QUIET and why != self.last_error:
            log.warning("the control plane ended %s: %s", method.rsplit("/", 1)[-1], why)
        self.last_error = why
