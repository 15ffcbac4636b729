"""The sync between global and zones, without sockets: what each side sends and how the
other applies it (the HTTP adapters in global_sync.py and zone_sync.py stay thin).

Down (global -> zone): the zone asks with ``since`` = the last global revision it applied.
Global answers with a :class:`DownBatch`: every resource meant for that zone whose version
(the store revision of its last write) is above ``since``, and the keys deleted since then
from a bounded log of deletions (:class:`DownFeed`). When the log does not reach back to
``since`` (global restarted, or the zone was away for more deletions than the log holds) the
batch carries ``keys``, the key of everything the zone should hold, instead: still only the
changed resources travel, and the zone deletes whatever of global's it holds that ``keys``
does not list. A ``since`` above global's revision (global's store was replaced) resends all.

Up (zone -> global): the zone's own ``ZoneService`` records, the same way round: an
:class:`UpBatch` of those changed above ``base``, global's stored position, which global
checks (a compare-and-set, like If-Match) so a batch can never be applied twice or skipped.

What goes down: Meshes (with the mesh CA, see ca_transfer.py), every policy kind, and every
other zone's ``ZoneService`` records. What stays in a zone: Dataplanes, Services (VIPs), its
own ``ZoneService`` records (sent up).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from meshline.core.dataplane import DataplaneSpec
from meshline.core.resource import KindRegistry, Resource, ResourceKey
from meshline.core.zones import (
    ZONE_SERVICE,
    IngressAddress,
    TaggedInstances,
    ZoneServiceSpec,
    zone_service_name,
)

MAX_TOMBSTONES = 10_000  # deletions global remembers for incremental resumes (then: keys)


def synced_down(kinds: KindRegistry, kind: str) -> bool:
    """Kinds authored at global (and refused on a zone): Meshes and the policy kinds."""
    info = kinds.find(kind)
    return kind == "Mesh" or (info is not None and info.is_policy and not info.internal)


def for_zone(kinds: KindRegistry, r: Resource, zone: str) -> bool:
    """Whether global sends ``r`` to ``zone``: what is authored at global, and the other zones' services."""
    if r.kind == ZONE_SERVICE:
        spec = r.spec
        assert isinstance(spec, ZoneServiceSpec)
        return spec.zone != zone
    return synced_down(kinds, r.kind)


def key_json(key: ResourceKey) -> list[str]:
    return [key.kind, key.mesh, key.name]


def key_from(raw: object) -> ResourceKey:
    if not (isinstance(raw, list) and len(raw) == 3 and all(isinstance(x, str) for x in raw)):
        raise ValueError(f"a key must be [kind, mesh, name], not {raw!r}")
    return ResourceKey(raw[0], raw[1], raw[2])


def wire(r: Resource) -> dict[str, Any]:
    """A resource as it travels: its envelope without the sender's version and times."""
    out = r.to_json()
    for k in ("version", "createdAt", "updatedAt"):
        out.pop(k, None)
    return out


@dataclass
class DownBatch:
    revision: int  # the zone is at this global revision once it applied the batch
    put: list[Resource]
    delete: list[ResourceKey]
    keys: list[ResourceKey] | None = None  # present: everything the zone should hold from global

    def to_json(self, extra: Mapping[str, dict[str, Any]] | None = None) -> dict[str, Any]:
        """``extra``: fields to add to a resource's document by key (the mesh CA of a Mesh)."""
        put = []
        for r in self.put:
            doc = wire(r)
            if extra and str(r.key) in extra:
                doc.update(extra[str(r.key)])
            put.append(doc)
        out: dict[str, Any] = {"revision": self.revision, "put": put, "delete": [key_json(k) for k in self.delete]}
        if self.keys is not None:
            out["keys"] = [key_json(k) for k in self.keys]
        return out

    @property
    def empty(self) -> bool:
        return not self.put and not self.delete and self.keys is None


@dataclass
class DownFeed:
    """Global's side of the down stream: the deletions it saw, and batches cut from the read model."""

    max_tombstones: int = MAX_TOMBSTONES
    floor: int = 0  # deletions above this revision are all in the log
    tombstones: deque[tuple[int, ResourceKey]] = field(default_factory=deque)

    def deleted(self, key: ResourceKey, revision: int) -> None:
        self.tombstones.append((revision, key))
        while len(self.tombstones) > self.max_tombstones:
            gone, _ = self.tombstones.popleft()
            self.floor = max(self.floor, gone)

    def batch(self, since: int, revision: int, resources: Iterable[Resource],
              versions: Mapping[ResourceKey, int] | None = None) -> DownBatch:  # fmt: skip
        """What takes a zone at ``since`` to ``revision``; ``resources``: everything meant for
        it now. ``versions``: a resource's effective version where more than its own write
        counts (a Mesh whose CA changed)."""
        held = list(resources)
        if since > revision:
            since = 0  # the zone saw more than global ever wrote: global's store was replaced

        def version(r: Resource) -> int:
            return max(r.version, (versions or {}).get(r.key, 0))

        changed = sorted((r for r in held if version(r) > since), key=_apply_order)
        if since >= self.floor:
            live = {r.key for r in held}
            gone = sorted({k for rev, k in self.tombstones if rev > since and k not in live}, key=_delete_order)
            return DownBatch(revision, changed, gone)
        return DownBatch(revision, changed, [], sorted((r.key for r in held), key=_delete_order))


def _apply_order(r: Resource) -> tuple[bool, str, str, str]:
    return (r.kind != "Mesh", r.mesh, r.kind, r.name)  # Meshes before what lives in them


def _delete_order(k: ResourceKey) -> tuple[bool, str, str, str]:
    return (k.kind == "Mesh", k.mesh, k.kind, k.name)  # Meshes after what lives in them


@dataclass
class UpBatch:
    base: int  # the zone revision global must be at for this batch to apply
    revision: int  # global is at this zone revision once it applied it
    put: list[Resource]
    delete: list[ResourceKey]
    resync: bool = False  # put is everything: global drops the zone's records it does not list
    applied: int = 0  # the global revision the zone has applied (for `get zones`)
    errors: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"base": self.base, "revision": self.revision, "put": [wire(r) for r in self.put],
                "delete": [key_json(k) for k in self.delete], "resync": self.resync, "applied": self.applied,
                "errors": self.errors[:20]}  # fmt: skip


def up_batch(base: int, revision: int, own: Sequence[Resource], deleted: Iterable[tuple[int, ResourceKey]],
             applied: int, errors: list[str], resync: bool = False) -> UpBatch:  # fmt: skip
    """The zone's side: its own records changed above ``base`` (all of them with ``resync``)."""
    live = {r.key for r in own}
    put = [r for r in own if resync or r.version > base]
    gone = [] if resync else sorted({k for rev, k in deleted if rev > base and k not in live})
    return UpBatch(base, revision, sorted(put, key=lambda r: r.key), gone, resync, applied, errors)


# -- the zone's inventory ------------------------------------------------------------


@dataclass(frozen=True)
class LocalEndpoint:
    """What the inventory needs of one endpoint (render.mesh_snapshot.Endpoint has more)."""

    service: str
    tags: Mapping[str, str]
    healthy: bool


def ingress_of(dataplanes: Iterable[Resource], offline: frozenset[str] = frozenset()) -> IngressAddress | None:
    """The zone ingress other zones reach this mesh through: the first ready one by name."""
    for dp in sorted(dataplanes, key=lambda d: d.name):
        spec = dp.spec
        if isinstance(spec, DataplaneSpec) and spec.proxy == "zone-ingress" and spec.ready and dp.name not in offline:
            return IngressAddress(address=spec.address, port=spec.inbound[0].port)
    return None


def inventory(zone: str, endpoints: Iterable[LocalEndpoint], protocols: Mapping[str, str],
              ingress: IngressAddress | None) -> dict[str, ZoneServiceSpec]:  # fmt: skip
    """resource name -> the ``ZoneService`` spec of each service with a healthy local instance."""
    groups: dict[str, dict[tuple[tuple[str, str], ...], int]] = {}
    for ep in endpoints:
        if not ep.healthy:
            continue
        tags = tuple(sorted((k, v) for k, v in ep.tags.items() if k not in ("service", "zone")))
        per = groups.setdefault(ep.service, {})
        per[tags] = per.get(tags, 0) + 1
    out = {}
    for service, per in sorted(groups.items()):
        out[zone_service_name(zone, service)] = ZoneServiceSpec(
            zone=zone, service=service, protocol=protocols.get(service, "tcp"), ingress=ingress,
            instances=[TaggedInstances(tags=dict(t), instances=n) for t, n in sorted(per.items())],
        )  # fmt: skip
    return out


# -- the zone's rollout report (what `apply --wait` at global reads) ------------------------

Report = dict[str, dict[str, Any]]  # mesh -> {"settledRevision": int, "dataplanes": {name: entry}}


def report_delta(sent: Report | None, now: Report) -> dict[str, Any] | None:
    """What to send so that global, holding ``sent``, holds ``now``: per mesh the changed
    dataplane entries and the names gone (all of them, ``full``, when global holds nothing);
    None when nothing changed. Keeps the up stream incremental: an ACK is one entry."""
    out: dict[str, Any] = {}
    for mesh, rep in now.items():
        before = (sent or {}).get(mesh)
        dps: dict[str, Any] = rep["dataplanes"]
        if before is None:
            out[mesh] = {"settledRevision": rep["settledRevision"], "full": True, "dataplanes": list(dps.values())}
            continue
        old: dict[str, Any] = before["dataplanes"]
        changed = [d for name, d in dps.items() if old.get(name) != d]
        gone = sorted(old.keys() - dps.keys())
        if changed or gone or before["settledRevision"] != rep["settledRevision"]:
            out[mesh] = {"settledRevision": rep["settledRevision"], "dataplanes": changed, "gone": gone}
    for mesh in (sent or {}).keys() - now.keys():
        out[mesh] = None  # the mesh is gone from the zone
    return out or None


def merge_report(held: Report, delta: dict[str, Any], max_meshes: int, max_dataplanes: int) -> None:
    """Global's side of :func:`report_delta` (bounded: input from outside)."""
    for mesh, rep in list(delta.items())[:max_meshes]:
        if rep is None:
            held.pop(str(mesh), None)
            continue
        if not isinstance(rep, dict):
            continue
        current = held.get(str(mesh))
        if current is None or rep.get("full"):
            current = held[str(mesh)] = {"settledRevision": 0, "dataplanes": {}}
        current["settledRevision"] = int(rep.get("settledRevision") or 0)
        dps: dict[str, Any] = current["dataplanes"]
        for d in rep.get("dataplanes") or []:
            if isinstance(d, dict) and isinstance(d.get("name"), str) and (d["name"] in dps or len(dps) < max_dataplanes):
                dps[d["name"]] = d
        for name in rep.get("gone") or []:
            dps.pop(str(name), None)
