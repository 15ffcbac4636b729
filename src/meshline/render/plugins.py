"""The contract between rendering and policy packages.

A policy package (``meshline.policies.<kind>``) exposes ``PLUGIN``: its kind and
hooks that configure the sections of one dataplane. A hook reads only its
arguments and changes only the section it is given, so rendering stays pure and
the outbound result can be shared by every caller with the same tags.
Plugins run in ``order`` (routing before resilience before observability).
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


@dataclass(frozen=True)
class Plugin:
    kind: KindInfo
    order: int
    outbound: OutboundHook | None = None
    inbound: InboundHook | None = None
