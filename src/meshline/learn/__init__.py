"""Learning from traffic: least-privilege permissions from what the mesh observed, and traffic
record and replay (docs/learn-and-replay.md).

* :mod:`.suggest`: TrafficPermissions allowing exactly the observed edges (pure);
* :mod:`.recording`: the TrafficRecording kind; :mod:`.capture`: its render step (a Lua filter
  on the recorded inbounds only);
* :mod:`.api`: ``permissions/suggest``, ``permissions/report`` and ``record`` routes;
* :mod:`.har` and :mod:`.replay`: what the CLI does with a recording (HAR files, replay, differences).

:func:`install` wires it into a control plane (``server.factory`` calls it after telemetry).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from meshline.controlplane.settings import Settings
    from meshline.extensions import Extensions

JANITOR_S = 5.0  # how often expired recordings are looked for


def install(ext: Extensions, settings: Settings) -> None:
    """Add the recording render step, the API routes and the janitor of expired recordings."""
    import asyncio
    import contextlib
    import logging
    import time

    from meshline.controlplane.context import ControlPlaneContext
    from meshline.core.errors import Conflict, NotFound
    from meshline.core.resource import spec_as
    from meshline.learn.api import LearnApi
    from meshline.learn.capture import PLUGIN
    from meshline.learn.recording import KIND, TrafficRecordingSpec
    from meshline.telemetry.intake import TelemetryIntake

    log = logging.getLogger("meshline.learn")
    running: list[ControlPlaneContext] = []
    tasks: list[asyncio.Task[None]] = []

    def intake() -> TelemetryIntake | None:
        found = running[0].services.get("telemetry") if running else None
        return found if isinstance(found, TelemetryIntake) else None

    async def janitor(ctx: ControlPlaneContext) -> None:
        """A recorder that died leaves its recording: delete it once its ``until`` passed."""
        while True:
            now = time.time()
            for mesh in ctx.model.mesh_names():
                for res in ctx.model.of_kind(mesh, KIND.kind):
                    if spec_as(res, TrafficRecordingSpec).until < now:
                        with contextlib.suppress(NotFound, Conflict):
                            await ctx.store.delete(res.key, res.version)
                            log.info("recording %s/%s expired: deleted", mesh, res.name)
            await asyncio.sleep(JANITOR_S)

    def on_start(ctx: ControlPlaneContext) -> None:
        running[:] = [ctx]
        tasks[:] = [asyncio.create_task(janitor(ctx), name="recording-janitor")]

    async def on_stop() -> None:
        for t in tasks:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t

    ext.render_steps.append(PLUGIN)
    ext.on_start.append(on_start)
    ext.on_stop.append(on_stop)
    ext.routes.append(LearnApi(lambda: running[0], intake).routes)
