"""Wires the control plane together: store, reconciler, ADS server, REST API."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from aiohttp import web

from meshline.api.auth import Authenticator
from meshline.api.server import build_app
from meshline.api.site import ConnectionGuard, start_site
from meshline.controlplane.context import ControlPlaneContext
from meshline.controlplane.datadir import secure_data_dir
from meshline.controlplane.health import OfflineTracker
from meshline.controlplane.limits import ConnectionLimits, QuietConnectionErrors, raise_fd_limit
from meshline.controlplane.metrics import TARGETS_PATH, metrics_text, prometheus_targets_handler
from meshline.controlplane.reconciler import Reconciler
from meshline.controlplane.settings import Settings, split_address
from meshline.controlplane.status import StatusRegistry
from meshline.core.errors import MeshlineError, NotFound
from meshline.core.mesh import MeshSpec
from meshline.core.resource import Resource, ResourceKey
from meshline.kinds import default_kinds
from meshline.policies import plugins as default_plugins
from meshline.render import metrics as metrics_step
from meshline.store.factory import open_store
from meshline.xds.cache import SnapshotCache
from meshline.xds.server import AdsServicer, Authorizer, CallAuthenticator, start_server

log = logging.getLogger("meshline.controlplane")
XDS_CA_PEM = "xds_ca_pem"  # ctx.services key: the PEM agents verify the xDS server with


@dataclass
class Extensions:
    """Optional subsystems hook in here (security, telemetry, rate limiting)."""

    authenticator: Authenticator | None = None
    xds_credentials: grpc.ServerCredentials | None = None
    # Runs on every call of every service on the xDS port (see xds.server.AuthenticatingInterceptor).
    grpc_authenticate: CallAuthenticator | None = None
    xds_authorize: Authorizer | None = None
    grpc_services: list[Callable[[grpc.aio.Server], None]] = field(default_factory=list)
    routes: list[Callable[[web.Application], None]] = field(default_factory=list)
    on_start: list[Callable[[ControlPlaneContext], object]] = field(default_factory=list)
    on_stop: list[Callable[[], object]] = field(default_factory=list)
    # Serves the REST API over HTTPS when set (see Settings.api_tls).
    api_ssl: ssl.SSLContext | None = None


class ControlPlane:
    def __init__(self, settings: Settings, extensions: Extensions | None = None) -> None:
        self.settings = settings
        self.ext = extensions or Extensions()
        self.kinds = default_kinds()
        self.store = open_store(settings.store_url, self.kinds, settings.data_dir)
        self.cache = SnapshotCache()
        self.status = StatusRegistry()
        self.offline = OfflineTracker(self.status, settings.offline_after)
        self.reconciler = Reconciler(
            self.store,
            self.cache,
            [*default_plugins(), metrics_step.PLUGIN],  # + per-request Prometheus stats on every sidecar
            settings.debounce,
            offline=self.offline.offline_in,
        )
        self.ctx = ControlPlaneContext(self.kinds, self.store, self.reconciler, self.status)
        self.ctx.metrics.watch(self.reconciler, self.status)  # pushes and push latency (change -> ACK)
        self._grpc: grpc.aio.Server | None = None
        self._runner: web.AppRunner | None = None
        self._api_server: asyncio.Server | None = None
        self._quiet: QuietConnectionErrors | None = None
        self.api_connections: ConnectionGuard | None = None
        self.api_port = 0
        self.xds_port = 0
        self.started_at = 0.0

    async def start(self) -> None:
        self.started_at = time.monotonic()
        api_host, api_port = split_address(self.settings.api_address, "API address")
        xds_host, xds_port = split_address(self.settings.xds_address, "xDS address")
        secure_data_dir(self.settings.data_dir)
        limits = ConnectionLimits.from_settings(self.settings, raise_fd_limit())
        log.info(
            "connections: at most %d per port; %gs for a handshake, %gs without a request",
            limits.max_connections, limits.handshake_timeout, limits.idle_timeout,
        )  # fmt: skip
        self._quiet = QuietConnectionErrors(asyncio.get_running_loop())
        self._quiet.install()
        await self.store.start()
        if self.settings.create_default_mesh:
            await self._ensure_default_mesh()
        for hook in self.ext.on_start:
            result = hook(self.ctx)
            if asyncio.iscoroutine(result):
                await result
        await self.reconciler.start()
        self.offline.start(self.reconciler)
        servicer = AdsServicer(
            self.cache, self.status, self.ext.xds_authorize,
            on_connect=self.offline.connected, on_disconnect=self.offline.disconnected,
        )
        extra = self.ext.grpc_services

        def add_services(server: grpc.aio.Server) -> None:
            for add in extra:
                add(server)

        try:
            self._grpc, self.xds_port = await start_server(
                servicer,
                f"{xds_host}:{xds_port}",
                self.ext.xds_credentials,
                add_services,
                authenticate=self.ext.grpc_authenticate,
                options=limits.grpc_options(),
            )
        except (OSError, RuntimeError) as err:
            await self.stop()
            raise MeshlineError(
                f"cannot listen for xDS on {xds_host}:{xds_port} ({err}); stop what uses it or pass --xds-address"
            ) from None
        def core_extras(app: web.Application) -> None:
            app.router.add_get("/metrics", self._metrics)
            app.router.add_get("/api/v1/xds", self._xds_info)
            app.router.add_get(TARGETS_PATH, prometheus_targets_handler)

        app = build_app(self.ctx, self.ext.authenticator, [core_extras, *self.ext.routes])
        self.ctx.metrics.known_routes = frozenset(r.canonical for r in app.router.resources())
        # keepalive_timeout: a connection must complete a request head this soon after it
        # opens or after its previous response (aiohttp closes it otherwise)
        self._runner = web.AppRunner(app, access_log=None, keepalive_timeout=limits.idle_timeout)
        await self._runner.setup()
        try:
            self._api_server, self.api_connections = await start_site(
                self._runner,
                api_host,
                api_port,
                ssl_context=self.ext.api_ssl,
                handshake_timeout=limits.handshake_timeout,
                max_connections=limits.max_connections,
            )
        except OSError as err:
            await self.stop()
            raise MeshlineError(
                f"cannot listen for the API on {api_host}:{api_port} ({err.strerror});"
                " stop what uses it or pass --api-address"
            ) from None
        sockets = self._api_server.sockets
        self.api_port = sockets[0].getsockname()[1] if sockets else api_port
        log.info(
            "control plane ready: API on %s:%d, xDS on %s:%d",
            api_host,
            self.api_port,
            xds_host,
            self.xds_port,
        )

    async def _xds_info(self, request: web.Request) -> web.Response:
        """Where agents reach xDS and how to verify it, so an agent told only the API URL
        never guesses (any valid token may ask: agents need it before their first stream)."""
        host, _ = split_address(self.settings.xds_address, "xDS address")
        ca_pem = self.ctx.services.get(XDS_CA_PEM)
        return web.json_response({
            # a wildcard listener: the agent uses the host it reached the API on
            "host": None if host in ("0.0.0.0", "::", "") else host,
            "port": self.xds_port,
            "tls": self.ext.xds_credentials is not None,
            "caPem": ca_pem if isinstance(ca_pem, str) else None,
        })  # fmt: skip

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(text=metrics_text(self.ctx), content_type="text/plain")

    async def _ensure_default_mesh(self) -> None:
        if await self.store.list("Mesh"):
            return
        try:
            await self.store.get(ResourceKey("Mesh", "", "default"))
        except NotFound:
            await self.store.create(Resource(kind="Mesh", name="default", spec=MeshSpec()))

    async def stop(self) -> None:
        self.offline.stop()  # first: the streams this closes must not mark anything offline
        for hook in self.ext.on_stop:
            result = hook()
            if asyncio.iscoroutine(result):
                await result
        if self._api_server is not None:
            self._api_server.close()  # no new connections; cleanup() below closes the open ones
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._api_server is not None:
            await self._api_server.wait_closed()
            self._api_server = None
        if self._grpc is not None:
            await self._grpc.stop(grace=0.5)
            self._grpc = None
        await self.reconciler.stop()
        await self.store.close()
        if self._quiet is not None:
            self._quiet.uninstall()
            self._quiet = None

    @property
    def api_url(self) -> str:
        host, _ = split_address(self.settings.api_address, "API address")
        host = "127.0.0.1" if host in ("0.0.0.0", "") else host
        scheme = "https" if self.ext.api_ssl is not None else "http"
        return f"{scheme}://{host}:{self.api_port}"
