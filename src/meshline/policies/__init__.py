"""Policy kinds, one package each: ``api`` (schema + validation), ``plugin`` (matching + Envoy configurer).

:func:`plugins` lists them in the order they configure a dataplane.
"""

from __future__ import annotations

from meshline.policies import (
    circuitbreaker,
    faultinjection,
    healthcheck,
    httproute,
    loadbalancer,
    ratelimit,
    retry,
    tcproute,
    timeout,
    trafficpermission,
)
from meshline.render.plugins import Plugin


def plugins() -> list[Plugin]:
    """Every policy plugin, in render order. Add a new policy package here."""
    found: list[Plugin] = [
        trafficpermission.PLUGIN,
        httproute.PLUGIN,
        tcproute.PLUGIN,
        ratelimit.PLUGIN,
        faultinjection.PLUGIN,
        timeout.PLUGIN,  # resilience: timeout, retry, circuitbreaker, healthcheck, loadbalancer
        retry.PLUGIN,
        circuitbreaker.PLUGIN,
        healthcheck.PLUGIN,
        loadbalancer.PLUGIN,
    ]
    return sorted(found, key=lambda p: p.order)
