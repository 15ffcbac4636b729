"""A dry run's answer to "what would this apply change?": the mesh rendered again with the
resources as they would be stored, each dataplane's config compared with what it runs now.

Nothing is written and nothing is pushed: the reconciler's read model is copied, not changed,
and the renders go nowhere. Rendering a whole mesh costs what a Mesh change costs the
reconciler; it yields to the event loop as the reconciler does, and a mesh with more than
:data:`MAX_DATAPLANES` dataplanes is not previewed (the answer says so).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from meshline.controlplane.reconciler import YIELD_EVERY, Reconciler
from meshline.core.resource import Resource
from meshline.render.mesh_snapshot import MeshSnapshot
from meshline.render.render import render
from meshline.xds import names

MAX_DATAPLANES = 2_000


def _applied(result: Any) -> set[tuple[str, str, str]]:
    return {(a.kind, a.name, a.target) for a in result.applied} if result is not None else set()


async def preview(rec: Reconciler, writes: Sequence[Resource]) -> dict[str, Any]:
    """Per mesh written to: each dataplane whose config would change, the xDS types that would
    change and the policies it would gain or lose (with where they apply), or why not."""
    out: dict[str, Any] = {}
    for mesh in sorted({r.mesh or r.name for r in writes}):
        mine = [r for r in writes if (r.mesh or r.name) == mesh]
        live = dict(rec.model.resources(mesh))
        mesh_res = next((r for r in mine if r.kind == "Mesh"), rec.model.mesh(mesh))
        for r in mine:
            if r.kind != "Mesh":
                live[r.key] = r
        dataplanes = [r for r in live.values() if r.kind == "Dataplane"]
        if mesh_res is None:
            out[mesh] = {"dataplanes": [], "note": "a new mesh: nothing runs in it yet"}
            continue
        if len(dataplanes) > MAX_DATAPLANES:
            out[mesh] = {"dataplanes": [], "note": f"{len(dataplanes)} dataplanes: more than a dry run renders"
                         f" ({MAX_DATAPLANES}); apply to a test mesh first"}
            continue
        # rendered as the live one is (the taps' watched services, this zone), so only the
        # change itself shows as a difference
        snap = MeshSnapshot.build(mesh_res, list(live.values()), rec.revision + 1, rec.offline(mesh),
                                   known_protocols=rec.known_protocols.get(mesh),
                                   watched=rec.watched.get(mesh, frozenset()), zone=rec.zone)
        changed: list[dict[str, Any]] = []
        turn = time.monotonic()
        for dp in sorted(dataplanes, key=lambda r: r.name):
            if time.monotonic() - turn > YIELD_EVERY:
                await asyncio.sleep(0)
                turn = time.monotonic()
            node = names.node_id(mesh, dp.name)
            before = rec.results.get(node)
            try:
                after = render(dp, snap, rec.plugins)
            except Exception as err:  # the apply would leave this dataplane on its last good config
                changed.append({"name": dp.name, "renderError": str(err), "types": [], "gained": [], "lost": []})
                continue
            old = before.snapshot.versions() if before is not None else {}
            new = after.snapshot.versions()
            types = sorted(t for t in {*old, *new} if old.get(t) != new.get(t))
            if not types:
                continue
            gained, lost = _applied(after) - _applied(before), _applied(before) - _applied(after)
            changed.append({
                "name": dp.name, "new": before is None, "types": types,
                "gained": [{"kind": k, "name": n, "target": t} for k, n, t in sorted(gained)],
                "lost": [{"kind": k, "name": n, "target": t} for k, n, t in sorted(lost)],
            })  # fmt: skip
        out[mesh] = {"dataplanes": changed, "rendered": len(dataplanes)}
    return out
