"""Progressive delivery: the Rollout kind, its analysis and the controller that drives it.

* :mod:`.api`: the schema and the checks one document can carry;
* :mod:`.checks`: the checks against the mesh at apply (service, versions, other routes);
* :mod:`.plan`: every strategy as a list of stages;
* :mod:`.machine`: the state machine, sans-IO (pure transitions given measurements and time);
* :mod:`.routing`: the HTTPRoute a rollout owns (its weights reach Envoy through it);
* :mod:`.controller`: reads the store and the telemetry, calls webhooks, writes state and route;
* :mod:`.routes`: ``/api/v1/meshes/{mesh}/rollouts/{name}/status|promote|pause|resume|abort``.

:func:`install` wires it into a control plane (``server.factory`` calls it after telemetry).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from meshline.controlplane.settings import Settings
    from meshline.extensions import Extensions


def install(ext: Extensions, settings: Settings) -> None:
    """Add the apply checks, the controller (started with the control plane) and the API routes."""
    from meshline.controlplane.context import ControlPlaneContext
    from meshline.rollouts.checks import check
    from meshline.rollouts.controller import RolloutController, VersionSignals
    from meshline.rollouts.routes import RolloutApi

    running: list[ControlPlaneContext] = []
    controllers: list[RolloutController] = []

    def signals() -> VersionSignals | None:
        intake = running[0].services.get("telemetry") if running else None
        return intake if intake is not None and hasattr(intake, "version_summary") else None

    def on_start(ctx: ControlPlaneContext) -> None:
        running[:] = [ctx]
        ctx.validators.append(check)
        controller = RolloutController(ctx, signals)
        controllers[:] = [controller]
        controller.start()

    async def on_stop() -> None:
        for c in controllers:
            await c.stop()

    ext.on_start.append(on_start)
    ext.on_stop.append(on_stop)
    ext.routes.append(RolloutApi(lambda: running[0], signals).routes)
