"""What the render loop produced: per dataplane its last good render or its render error,
per mesh the snapshot it rendered from. Read by the API (inspect, sync, status),
telemetry (explanations) and metrics; written only by :mod:`.reconciler`."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from meshline.render.mesh_snapshot import MeshSnapshot
from meshline.render.render import RenderResult


class RenderResults:
    def __init__(self) -> None:
        self._results: dict[str, RenderResult] = {}  # node id -> last good render
        self._errors: dict[str, str] = {}  # node id -> why its last render failed
        self._snapshots: dict[str, MeshSnapshot] = {}  # mesh -> the snapshot last rendered

    # -- reading ---------------------------------------------------------------------
    def get(self, node: str) -> RenderResult | None:
        return self._results.get(node)

    def error(self, node: str) -> str | None:
        return self._errors.get(node)

    def errors(self) -> Mapping[str, str]:
        """node id -> render error, read-only."""
        return MappingProxyType(self._errors)

    def snapshot(self, mesh: str) -> MeshSnapshot | None:
        return self._snapshots.get(mesh)

    # -- writing (the render loop only) ------------------------------------------------
    def rendered(self, node: str, result: RenderResult) -> None:
        self._errors.pop(node, None)
        self._results[node] = result

    def failed(self, node: str, error: str) -> None:
        """Keep the last good render (its config stays in Envoy) and say why this one failed."""
        self._errors[node] = error

    def forget(self, node: str) -> None:
        self._results.pop(node, None)
        self._errors.pop(node, None)

    def set_snapshot(self, mesh: str, snap: MeshSnapshot) -> None:
        self._snapshots[mesh] = snap

    def drop_snapshot(self, mesh: str) -> None:
        self._snapshots.pop(mesh, None)
