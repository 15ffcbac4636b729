"""What a sidecar does where no policy says otherwise: every default, defined once.

The base generators (envoy.py, outbound.py) render these; the Timeout policy documents
them and overrides them field by field; the Retry apply-time check compares a per-try
timeout with :func:`request_timeout`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

H2_PROTOCOLS = frozenset({"http2", "grpc"})
L7_PROTOCOLS = frozenset({"http", "http2", "grpc"})


@dataclass(frozen=True)
class Defaults:
    connect: timedelta = timedelta(seconds=5)
    idle: timedelta = timedelta(hours=1)  # connection without streams (HTTP); no bytes (TCP)
    http_request: timedelta = timedelta(seconds=15)  # HTTP/1.1 services
    h2_request: timedelta = timedelta(0)  # http2/gRPC: long-lived streams are normal
    stream_idle: timedelta = timedelta(minutes=5)
    max_stream_duration: timedelta = timedelta(0)  # unlimited
    max_connection_duration: timedelta = timedelta(0)  # unlimited


DEFAULTS = Defaults()


def request_timeout(protocol: str) -> timedelta:
    """The request timeout of an outbound to a service speaking ``protocol`` (0: none)."""
    return DEFAULTS.h2_request if protocol in H2_PROTOCOLS else DEFAULTS.http_request
