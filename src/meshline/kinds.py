"""The registry of every resource kind this build knows."""

from __future__ import annotations

from meshline.core import dataplane, external_service, mesh, service
from meshline.core.resource import KindRegistry


def default_kinds() -> KindRegistry:
    from meshline.learn.recording import KIND as RECORDING
    from meshline.policies import kinds, other_kinds
    from meshline.rollouts.api import KIND as ROLLOUT
    from meshline.security.kinds import KINDS as SECURITY_KINDS

    # The security kinds are internal (KindInfo.internal): stored, never served.
    return KindRegistry([*SECURITY_KINDS, mesh.KIND, dataplane.KIND, service.KIND, external_service.KIND,
                         *(k.info for k in kinds()), *other_kinds(), ROLLOUT, RECORDING])
