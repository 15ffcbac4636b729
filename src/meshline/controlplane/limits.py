"""How many connections the control plane's ports hold, and for how long an idle one may stay.

Anyone who can reach a port can open connections without a credential; each costs a file
descriptor until the server closes it. So (see docs/security.md, "Connections"):

* start-up raises the open-file limit (soft to hard) where the system allows;
* each port (API, xDS) holds at most ``max_connections``, by default half of what the
  descriptor limit leaves after a reserve for the store, Redis and files;
* a client has ``handshake_timeout`` for its TLS / gRPC handshake, and a connection is
  closed after ``idle_timeout`` without a request (API: no complete request head; xDS: no
  call at all);
* errors accepting connections (out of descriptors) become a rate-limited warning instead of
  a traceback per attempt.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
from dataclasses import dataclass
from typing import Any

from meshline.controlplane.settings import Settings
from meshline.core.ratelog import RateLimitedLog

log = logging.getLogger("meshline.controlplane.limits")

# Descriptors kept free of client connections: store, Redis, Envoy-less work, logs, files.
RESERVED_FDS = 512
MIN_CONNECTIONS = 64
# An unlimited hard limit is raised to this much (setrlimit refuses RLIM_INFINITY as a soft limit).
CAP_FDS = 1 << 20
# Calls at once on one gRPC connection: Envoy opens another connection past it.
MAX_STREAMS_PER_CONNECTION = 1000
# Envoy pings the control plane every 30 s (agent/bootstrap.py); faster pings are refused.
MIN_CLIENT_PING_INTERVAL_MS = 10_000
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def raise_fd_limit() -> int:
    """Raise the soft open-file limit to the hard one; returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = CAP_FDS if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as err:
            log.warning("cannot raise the open-file limit from %d to %d (%s); fewer connections fit", soft, target, err)
            return soft
        log.info("raised the open-file limit from %d to %d", soft, target)
        return target
    return CAP_FDS if soft == resource.RLIM_INFINITY else soft


@dataclass(frozen=True)
class ConnectionLimits:
    handshake_timeout: float
    idle_timeout: float
    max_connections: int  # per port

    @classmethod
    def from_settings(cls, settings: Settings, fd_limit: int) -> ConnectionLimits:
        fits = max(MIN_CONNECTIONS, (fd_limit - RESERVED_FDS) // 2)
        wanted = settings.max_connections or fits
        if wanted > fits:
            log.warning(
                "MESHLINE_MAX_CONNECTIONS %d does not fit the open-file limit %d; each port holds at most %d",
                wanted, fd_limit, fits,
            )  # fmt: skip
        return cls(settings.handshake_timeout, settings.idle_timeout, min(wanted, fits))

    def grpc_options(self) -> list[tuple[str, int]]:
        """grpc.aio server options for the xDS port."""
        return [
            ("grpc.server_handshake_timeout_ms", round(self.handshake_timeout * 1000)),
            ("grpc.max_connection_idle_ms", round(self.idle_timeout * 1000)),
            ("grpc.max_allowed_incoming_connections", self.max_connections),
            ("grpc.max_concurrent_streams", MAX_STREAMS_PER_CONNECTION),
            # the server pings too: a vanished sidecar's connection is closed within ~40 s
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", MIN_CLIENT_PING_INTERVAL_MS),
            ("grpc.http2.max_ping_strikes", 2),
        ]


class QuietConnectionErrors:
    """The loop's exception handler while the control plane runs: failures to accept a
    connection for lack of descriptors or buffers are one warning per 10 s (asyncio retries
    the accept a second later), not a traceback per attempt; anything else goes on to the
    handler that was there before."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.previous = loop.get_exception_handler()
        self._log = RateLimitedLog(log)

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in RESOURCE_ERRNOS:
            self._log.warning(
                f"accept-{exc.errno}",
                "cannot accept connections: %s; new clients wait until descriptors free up"
                " (raise the open-file limit, or lower MESHLINE_MAX_CONNECTIONS)",
                exc.strerror,
            )
            return
        if self.previous is not None:
            self.previous(loop, context)
        else:
            loop.default_exception_handler(context)

    def install(self) -> None:
        self.loop.set_exception_handler(self)

    def uninstall(self) -> None:
        if self.loop.get_exception_handler() is self:
            self.loop.set_exception_handler(self.previous)
