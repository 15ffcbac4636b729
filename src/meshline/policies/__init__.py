"""Policy kinds, one package each (``api``: schema + checks, ``plugin``: its PolicyKind and
configurer), plus :mod:`.common`, what several kinds share (no kind imports another).

To add a kind: write its package, then add one line to :data:`KINDS`. Where the line goes
only breaks ties; the order kinds configure a dataplane in comes from their ``after``.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from meshline.core.resource import KindInfo
from meshline.policies import (
    circuitbreaker,
    faultinjection,
    gateway,
    healthcheck,
    httproute,
    jwtauthn,
    loadbalancer,
    ratelimit,
    retry,
    tcproute,
    timeout,
    trafficpermission,
)
from meshline.render.plugins import Plugin
from meshline.render.policy_kind import MeshCheck, PolicyKind, in_order

KINDS: tuple[PolicyKind[Any], ...] = (
    httproute.POLICY,
    tcproute.POLICY,
    jwtauthn.POLICY,
    trafficpermission.POLICY,
    ratelimit.POLICY,
    faultinjection.POLICY,
    timeout.POLICY,
    retry.POLICY,
    circuitbreaker.POLICY,
    healthcheck.POLICY,
    loadbalancer.POLICY,
)


@cache
def kinds() -> tuple[PolicyKind[Any], ...]:
    """Every policy kind, in the order they configure a dataplane."""
    return tuple(in_order(KINDS))


def mesh_checks() -> list[tuple[str, MeshCheck]]:
    """(kind, check): every kind's apply-time checks, as the control plane and the test kit run them."""
    return [*((k.name, check) for k in kinds() for check in k.mesh_checks), *gateway.MESH_CHECKS]


def plugins() -> list[Plugin]:
    """The render step of every policy kind, in order (resolution, then the configurer)."""
    return [k.step for k in kinds()] + [gateway.PLUGIN]


def other_kinds() -> tuple[KindInfo, ...]:
    """Kinds of this layer that are not selector policies: the gateway's (MeshGateway, MeshGatewayRoute)."""
    return gateway.KINDS
