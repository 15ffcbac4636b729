"""Which descriptors the rate-limit service counts: those the caller's mesh's RateLimit
policies make sidecars send (:class:`~meshline.xds.rls_descriptor.Shape`).

A policy changed or deleted a moment ago is still in sidecars that have not received the
push yet, so its old shape stays accepted for :data:`GRACE_S`; after that (or for a policy
that never existed) the call is refused before Redis is touched.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from meshline.policies.ratelimit.plugin import global_shapes
from meshline.render.mesh_snapshot import MeshSnapshot
from meshline.xds.rls_descriptor import Shape

GRACE_S = 30.0
MAX_RETIRED = 1000  # per mesh; policy churn faster than that loses the grace of the oldest

SnapshotOf = Callable[[str], MeshSnapshot | None]


class AllowedDescriptors:
    def __init__(self, snapshot: SnapshotOf, clock: Callable[[], float] = time.monotonic) -> None:
        self.snapshot = snapshot
        self.clock = clock
        self._current: dict[str, tuple[MeshSnapshot, dict[str, Shape]]] = {}
        self._retired: dict[str, dict[Shape, float]] = {}  # mesh -> shape -> accepted until

    def shapes(self, mesh: str, policy: str) -> list[Shape]:
        """The shapes a descriptor naming ``policy`` in ``mesh`` may have (none: unknown)."""
        snap = self.snapshot(mesh)
        if snap is None:  # no such mesh (any more)
            self._current.pop(mesh, None)
            self._retired.pop(mesh, None)
            return []
        now = self.clock()
        seen = self._current.get(mesh)
        if seen is None or seen[0] is not snap:
            shapes = global_shapes(snap)
            if seen is not None:
                self._retire(mesh, set(seen[1].values()) - set(shapes.values()), now)
            seen = self._current[mesh] = (snap, shapes)
        retired = self._retired.get(mesh, {})
        for shape in [s for s, until in retired.items() if until <= now]:
            del retired[shape]
        current = seen[1].get(policy)
        return ([current] if current else []) + [s for s in retired if s.policy == policy]

    def _retire(self, mesh: str, gone: set[Shape], now: float) -> None:
        retired = self._retired.setdefault(mesh, {})
        for shape in gone:
            retired.pop(shape, None)
            retired[shape] = now + GRACE_S
        while len(retired) > MAX_RETIRED:
            del retired[next(iter(retired))]
