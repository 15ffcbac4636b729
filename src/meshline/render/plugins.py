"""Render steps: hooks that configure the sections of one dataplane.

Policy kinds do not write these by hand: a :class:`~meshline.render.policy_kind.PolicyKind`
makes its step (resolution, then its configurer). Subsystems add steps of their own
(telemetry's access logs, the per-request stats) that run after every policy kind, in
the order they are listed. A hook reads only its arguments and changes only the section
it is given, so rendering stays pure and the outbound result can be shared by every
caller with the same tags.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from meshline.core.resource import KindInfo, Resource
from meshline.render.mesh_snapshot import MeshSnapshot
from meshline.render.sections import InboundSection, OutboundSection


class OutboundHook(Protocol):
    def __call__(self, section: OutboundSection, mesh: MeshSnapshot) -> None: ...


class InboundHook(Protocol):
    def __call__(self, section: InboundSection, dataplane: Resource, mesh: MeshSnapshot) -> None: ...


# The gateway's outbound section to a service (rendered with the gateway's tags as the caller
# and shaped by every outbound policy kind): where gateway routes take their clusters and the
# route defaults (timeout, retries) the mesh's policies give calls from the gateway.
BackendSection = Callable[[str], OutboundSection]


class GatewayHook(Protocol):
    """Builds a gateway's entry listeners (render/proxies.py ``GatewayListenerSection``)."""

    def __call__(self, dataplane: Resource, mesh: MeshSnapshot, backend: BackendSection) -> Sequence[InboundSection]: ...


@dataclass(frozen=True, eq=False)
class Plugin:
    kind: KindInfo
    outbound: OutboundHook | None = None
    inbound: InboundHook | None = None
    gateway: GatewayHook | None = None
    # Its inbound hook also shapes a gateway's entry listeners (RateLimit: yes; TrafficPermission,
    # which tells mesh callers apart by certificate, no: a gateway's callers have none).
    on_gateway: bool = False
    # Its inbound hook also guards an egress gateway's chain to each ExternalService, as the
    # callee of an L4 inbound (TrafficPermission: the callers are sidecars with mesh certificates).
    on_egress: bool = False
