"""Observability: every request counted, timed, traceable and, when it fails, explained.

* :mod:`.render_step` tells every sidecar to log (and trace) each request;
* :mod:`.als` receives the streamed entries, :mod:`.convert` flattens them into
  :class:`~.record.LogRecord`, :mod:`.explain` says why failures failed;
* :mod:`.intake` keeps recent records and rolling golden signals per mesh;
* :mod:`.api` serves stats, live taps and explanations to the CLI (`meshline stat/top/edges/tap/explain`);
  :mod:`.history_api` the last hour in 10 s buckets (:mod:`.series`) and recent failures (the dashboard).

:func:`install` wires all of it into a control plane (called by ``server.factory``).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from meshline.controlplane.settings import Settings
    from meshline.extensions import Extensions
    from meshline.telemetry.intake import TelemetryIntake


WATCH_WAIT_S = 3.0  # a new tap waits at most this long for the sidecars to stream everything


def install(ext: Extensions, settings: Settings) -> TelemetryIntake:
    """Add the render step, the AccessLogService, the API routes and the intake to ``ext``."""
    from meshline.controlplane.context import ControlPlaneContext
    from meshline.core.dataplane import DataplaneSpec
    from meshline.core.resource import ResourceKey
    from meshline.telemetry.als import AccessLogServicer, add_to_server
    from meshline.telemetry.api import TelemetryApi
    from meshline.telemetry.context import context_from
    from meshline.telemetry.history_api import HistoryApi
    from meshline.telemetry.intake import TelemetryIntake
    from meshline.telemetry.render_step import PLUGIN

    running: list[ControlPlaneContext] = []  # the control plane's, once it starts (nothing is read before)
    intake = TelemetryIntake(context_for=lambda r: context_from(running[0].results, r))

    def services_of(mesh: str, dataplane: str) -> frozenset[str] | None:
        dp = running[0].model.get(ResourceKey("Dataplane", mesh, dataplane)) if running else None
        return frozenset(dp.spec.services()) if dp is not None and isinstance(dp.spec, DataplaneSpec) else None

    async def watch(mesh: str, services: frozenset[str]) -> None:
        """Render the mesh with the taps' services watched, then wait (bounded) until the
        sidecars whose config changed ACKed it: a tap is on once they stream everything."""
        ctx = running[0]
        try:
            pushed = await asyncio.wait_for(asyncio.shield(ctx.reconciler.set_watched(mesh, services)), WATCH_WAIT_S)
        except TimeoutError:
            return
        def acked(node: str) -> bool:
            st, result = ctx.status.find(node), ctx.results.get(node)
            if st is None or not st.connected or result is None:
                return True  # a sidecar that is not connected gets the new config when it connects
            return all((t := st.types.get(kind)) is not None and t.acked == version
                       for kind, version in result.snapshot.versions().items())

        deadline = time.monotonic() + WATCH_WAIT_S
        while time.monotonic() < deadline and not all(acked(n) for n in pushed):
            await asyncio.sleep(0.005)

    def on_start(ctx: ControlPlaneContext) -> None:
        running[:] = [ctx]
        ctx.services["telemetry"] = intake
        intake.on_watch = watch
        intake.start()

    ext.render_steps.append(PLUGIN)
    ext.grpc_services.append(add_to_server(AccessLogServicer(intake, services_of)))
    def mesh_exists(mesh: str) -> bool:
        return bool(running) and running[0].model.mesh(mesh) is not None

    ext.routes.append(TelemetryApi(intake, mesh_exists, services_of).routes)
    ext.routes.append(HistoryApi(intake, mesh_exists, services_of).routes)
    ext.on_start.append(on_start)
    ext.on_stop.append(intake.stop)
    return intake
