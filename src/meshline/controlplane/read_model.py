"""The control plane's read model: every resource in memory, as the store's watch delivered it.

The store is the source of truth; this is what API validators, subsystems and the render
loop query instead of the store (no store read per request or per render). Only the
render loop (:mod:`.reconciler`) writes it, from the watch, in order: the last event for
a key is the newest, so nothing here compares versions. Readers get read-only views.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from types import MappingProxyType

from meshline.core.resource import Resource, ResourceKey

_EMPTY: Mapping[ResourceKey, Resource] = MappingProxyType({})


class ReadModel:
    def __init__(self) -> None:
        self._meshes: dict[str, Resource] = {}
        self._resources: dict[str, dict[ResourceKey, Resource]] = {}  # mesh -> key -> resource
        self._revision = 0

    # -- reading ---------------------------------------------------------------------
    @property
    def revision(self) -> int:
        """The store revision the model is at (every change up to it is in)."""
        return self._revision

    def mesh(self, name: str) -> Resource | None:
        return self._meshes.get(name)

    def mesh_names(self) -> list[str]:
        return list(self._meshes)

    def resources(self, mesh: str) -> Mapping[ResourceKey, Resource]:
        """Every resource of ``mesh`` (the Mesh itself aside), read-only."""
        bucket = self._resources.get(mesh)
        return MappingProxyType(bucket) if bucket is not None else _EMPTY

    def get(self, key: ResourceKey) -> Resource | None:
        if key.kind == "Mesh":
            return self._meshes.get(key.name)
        return self._resources.get(key.mesh, {}).get(key)

    def of_kind(self, mesh: str, kind: str) -> list[Resource]:
        return [r for r in self._resources.get(mesh, {}).values() if r.kind == kind]

    def by_mesh(self) -> Iterator[tuple[str, Mapping[ResourceKey, Resource]]]:
        """(mesh, its resources) for every mesh holding resources (a snapshot of the list)."""
        for mesh in list(self._resources):
            yield mesh, self.resources(mesh)

    # -- writing (the render loop only) ------------------------------------------------
    def held(self) -> list[ResourceKey]:
        """Every key held, Meshes included."""
        held = [ResourceKey("Mesh", "", name) for name in self._meshes]
        return held + [key for bucket in self._resources.values() for key in bucket]

    def replace(self, key: ResourceKey, res: Resource | None) -> Resource | None:
        """Hold ``res`` for ``key`` (None: delete it); returns what was held."""
        if key.kind == "Mesh":
            prior = self._meshes.pop(key.name, None)
            if res is not None:
                self._meshes[key.name] = res
            return prior
        bucket = self._resources.setdefault(key.mesh, {})
        prior = bucket.pop(key, None)
        if res is not None:
            bucket[key] = res
        return prior

    def advance(self, revision: int) -> None:
        self._revision = revision
