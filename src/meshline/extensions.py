"""The hooks optional subsystems (security, telemetry, rate limiting, dashboard) plug in through.

A layer of its own: above the REST API and the control-plane core it extends, below the
subsystems that fill it in and the composition root (:mod:`meshline.server`) that reads it.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

import grpc
from aiohttp.typedefs import Middleware

from meshline.api.auth import Authenticator
from meshline.api.routes import Route
from meshline.controlplane.context import ControlPlaneContext
from meshline.controlplane.settings import Settings
from meshline.render.plugins import Plugin
from meshline.xds.server import Authorizer, CallAuthenticator


@dataclass
class Extensions:
    """What optional subsystems add to a control plane before it is built; read once, when
    :class:`~meshline.server.controlplane.ControlPlane` is constructed and started."""

    authenticator: Authenticator | None = None
    xds_credentials: grpc.ServerCredentials | None = None
    # Runs on every call of every service on the xDS port (see xds.server.AuthenticatingInterceptor).
    grpc_authenticate: CallAuthenticator | None = None
    xds_authorize: Authorizer | None = None
    grpc_services: list[Callable[[grpc.aio.Server], None]] = field(default_factory=list)
    # API routes, asked for once the control plane started (handlers may need what on_start
    # made); registered before the generic resource routes and documented in /openapi.json.
    routes: list[Callable[[], Iterable[Route]]] = field(default_factory=list)
    middlewares: list[Middleware] = field(default_factory=list)  # inside authentication
    on_start: list[Callable[[ControlPlaneContext], object]] = field(default_factory=list)
    on_stop: list[Callable[[], object]] = field(default_factory=list)
    # Render steps run for every dataplane after the policies (e.g. telemetry's access logs).
    render_steps: list[Plugin] = field(default_factory=list)
    # Serves the REST API over HTTPS when set (see Settings.api_tls).
    api_ssl: ssl.SSLContext | None = None


class Subsystem(Protocol):
    """How every optional subsystem installs itself (``meshline.security.controlplane.install``,
    ``meshline.telemetry.install``, ``meshline.ratelimit.service.install``,
    ``meshline.dashboard.install``): it adds its hooks to ``ext`` and keeps what it needs
    from ``settings``; it never patches a built control plane. It may return its handle
    (e.g. the telemetry intake) for callers that want it."""

    def __call__(self, ext: Extensions, settings: Settings, /) -> object: ...
