"""Builds a ControlPlane with every optional subsystem this build has, from settings.

This is the one place that knows which subsystems exist; each installs itself through
the :class:`~meshline.controlplane.app.Extensions` hooks, so the core stays unaware of them.
"""

from __future__ import annotations

from meshline.controlplane.app import ControlPlane, Extensions
from meshline.controlplane.context import ControlPlaneContext
from meshline.controlplane.settings import Settings


def _cross_resource_checks(ctx: ControlPlaneContext) -> None:
    from meshline.policies.faultinjection.callers import check_conflicts
    from meshline.policies.retry.consistency import check_retry_timeouts

    ctx.validators.append(check_conflicts)  # one FaultInjection/RateLimit per caller and service
    ctx.validators.append(check_retry_timeouts)  # a per-try timeout longer than the request's


def build_control_plane(settings: Settings) -> ControlPlane:
    from meshline.dashboard import install as install_dashboard
    from meshline.policies.translate import install as install_routing
    from meshline.ratelimit.service import install as install_rate_limit_service
    from meshline.security.controlplane import install as install_security
    from meshline.telemetry import install as install_telemetry

    ext = Extensions()
    install_security(ext, settings)  # CA, tokens, API authentication, xDS over TLS
    install_rate_limit_service(ext, settings)  # Envoy's rate limit service, backed by Redis
    ext.on_start.append(install_routing)  # Gateway API / SMI translators, route reference checks
    ext.on_start.append(_cross_resource_checks)
    install_dashboard(ext)  # the page at / (static files; its API calls carry the token)
    cp = ControlPlane(settings, ext)
    install_telemetry(cp)  # access logs + tracing render step, log intake, stats/tap/explain API
    return cp


def demo_token(cp: ControlPlane, service: str) -> str | None:
    """A dataplane token for a demo service (None when the control plane runs without auth)."""
    from meshline.security.controlplane import demo_token as security_demo_token

    return security_demo_token(cp.settings, cp.ctx, service)
