"""Wires the control plane together: store, reconciler, ADS server, REST API."""

from __future__ import annotations

import asyncio
import logging
import time

import grpc
from aiohttp import web

from meshline.api import handshake_reports
from meshline.api.common import XDS_HANDSHAKE_FAILURES_PATH
from meshline.api.prometheus import TARGETS_PATH, prometheus_targets_handler
from meshline.api.request_input import json_body
from meshline.api.routes import Route
from meshline.api.server import build_app, principal
from meshline.api.site import ConnectionGuard, start_site
from meshline.controlplane.context import XDS_CA_PEM, ControlPlaneContext
from meshline.controlplane.health import OfflineTracker
from meshline.controlplane.limits import ConnectionLimits, QuietConnectionErrors, raise_fd_limit
from meshline.controlplane.metrics import metrics_text
from meshline.controlplane.reconciler import Reconciler
from meshline.controlplane.settings import Settings, split_address
from meshline.controlplane.shared_status import StatusPublisher, new_replica_id
from meshline.controlplane.vips import VipAllocator
from meshline.core.datadir import secure_data_dir
from meshline.core.errors import MeshlineError, NotFound
from meshline.core.labels import LOCAL_ORIGIN, system_labels
from meshline.core.mesh import MeshSpec
from meshline.core.resource import Resource, ResourceKey
from meshline.extensions import Extensions
from meshline.kinds import default_kinds
from meshline.policies import mesh_checks as policy_mesh_checks
from meshline.policies import plugins as default_plugins
from meshline.render import metrics as metrics_step
from meshline.security import crypto
from meshline.store.factory import open_store
from meshline.xds.cache import SnapshotCache
from meshline.xds.server import AdsServicer, start_server
from meshline.xds.status import StatusRegistry

log = logging.getLogger("meshline.controlplane")


class ControlPlane:
    def __init__(self, settings: Settings, extensions: Extensions | None = None) -> None:
        self.settings = settings
        self.ext = extensions or Extensions()
        self.kinds = default_kinds()
        self.store = open_store(settings.store_url, self.kinds, settings.data_dir)
        self.store.stamp_labels = system_labels(settings.zone, "global" if settings.mode == "global" else LOCAL_ORIGIN)  # origin and zone on every resource
        self.cache = SnapshotCache()
        self.status = StatusRegistry()
        self.offline = OfflineTracker(self.status, settings.offline_after)
        self.reconciler = Reconciler(
            self.store,
            self.cache,
            # the policy kinds, + the subsystems' steps, + per-request Prometheus stats on every
            # sidecar last (it and telemetry's step only append loggers)
            [*default_plugins(), *self.ext.render_steps, metrics_step.PLUGIN],
            settings.debounce,
            offline=self.offline.offline_in,
            zone=settings.render_zone,
        )
        self.vips = VipAllocator(self.store)  # every service's virtual IP (transparent mode)
        self.publisher = StatusPublisher(
            self.store, self.status, settings.replica_id or new_replica_id(), settings.status_flush, settings.replica_beat
        )
        self.ctx = ControlPlaneContext(
            self.kinds, self.store, self.reconciler, self.status,
            publisher=self.publisher, replica_ttl=settings.replica_ttl,
        )  # fmt: skip
        self.ctx.mesh_checks = policy_mesh_checks()
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
        await self.vips.start()
        await self.reconciler.start()
        await self.publisher.start()
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
        core = [
            Route("GET", "/metrics", self._metrics),  # Prometheus text, outside /api (scraped as is)
            Route("GET", "/api/v1/xds", self._xds_info, "Where agents reach xDS and the CA to verify it with"),
            Route("POST", XDS_HANDSHAKE_FAILURES_PATH, self._xds_handshake_failed,
                  "An agent says why its TLS handshake with xDS failed (logged by the control plane)",
                  body=handshake_reports.SCHEMA, codes=(413, 422)),
            Route("GET", TARGETS_PATH, prometheus_targets_handler,
                  "Prometheus HTTP service discovery for every dataplane"),
        ]  # fmt: skip
        routes = [*core, *(route for provide in self.ext.routes for route in provide())]
        app = build_app(self.ctx, self.ext.authenticator, routes, self.ext.middlewares)
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

    async def _xds_handshake_failed(self, request: web.Request) -> web.Response:
        report = handshake_reports.parse(await json_body(request, limit=4096, what="handshake report"))
        ca_pem = self.ctx.services.get(XDS_CA_PEM)
        own = crypto.fingerprint(crypto.load_certs(ca_pem)[0]) if isinstance(ca_pem, str) and ca_pem else ""
        text = handshake_reports.record(principal(request), request.remote, report, own)
        return web.json_response({"logged": text})

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
        await self.publisher.stop()  # after the streams ended: their ends are written, then goodbye
        await self.reconciler.stop()
        await self.vips.stop()
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
