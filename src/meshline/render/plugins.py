"""Render steps: hooks that configure the sections of one dataplane.

Policy kinds do not write these by hand: a :class:`~meshline.render.policy_kind.PolicyKind`
makes its step (resolution, then its configurer). Subsystems add steps of their own
(telemetry's access logs, the per-request stats) that run after every policy kind, in
the order they are listed. A hook reads only its arguments and changes only the section
it is given, so rendering stays pure and the outbound result can be shared by every
caller with the same tags.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from meshline.core.resource import KindInfo, Resource
from meshline.render.mesh_snapshot import MeshSnapshot
from meshline.render.sections import InboundSection, OutboundSection


class OutboundHook(Protocol):
    def __call__(self, section: OutboundSection, mesh: MeshSnapshot) -> None: ...


class InboundHook(Protocol):
    def __call__(self, section: InboundSection, dataplane: Resource, mesh: MeshSnapshot) -> None: ...


@dataclass(frozen=True, eq=False)
class Plugin:
    kind: KindInfo
    outbound: OutboundHook | None = None
    inbound: InboundHook | None = None
