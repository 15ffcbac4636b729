"""Builds a ControlPlane with every optional subsystem this build has, from settings.

This is the one place that knows which subsystems exist; each installs itself through
the :class:`~meshline.extensions.Extensions` hooks, so the core stays unaware of them.
"""

from __future__ import annotations

from meshline.controlplane.settings import Settings
from meshline.extensions import Extensions, Subsystem
from meshline.server.controlplane import ControlPlane


def _routing(ext: Extensions, settings: Settings) -> None:
    from meshline.policies.translate import install as install_routing

    ext.on_start.append(install_routing)  # Gateway API / SMI translators


def subsystems() -> tuple[Subsystem, ...]:
    """Every subsystem this build has, in the order they install (and start)."""
    from meshline.dashboard import install as install_dashboard
    from meshline.learn import install as install_learn
    from meshline.ratelimit.service import install as install_rate_limit_service
    from meshline.rollouts import install as install_rollouts
    from meshline.security.controlplane import install as install_security
    from meshline.telemetry import install as install_telemetry

    return (
        install_security,  # CA, tokens, API authentication, xDS over TLS
        install_rate_limit_service,  # Envoy's rate limit service, backed by Redis
        _routing,
        install_dashboard,  # the page at / (static files; its API calls carry the token)
        install_telemetry,  # access logs + tracing render step, log intake, stats/tap/explain API
        install_rollouts,  # Rollout checks at apply, the controller (reads telemetry), its API
        install_learn,  # permissions suggest/report, traffic recording (reads telemetry)
    )


def build_control_plane(settings: Settings) -> ControlPlane:
    ext = Extensions()
    for install in subsystems():
        install(ext, settings)
    return ControlPlane(settings, ext)


def demo_token(cp: ControlPlane, service: str) -> str | None:
    """A dataplane token for a demo service (None when the control plane runs without auth)."""
    from meshline.security.controlplane import demo_token as security_demo_token

    return security_demo_token(cp.settings, cp.ctx, service)
