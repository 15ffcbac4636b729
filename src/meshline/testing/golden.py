"""Golden-file tests for rendering: resources in (YAML), Envoy config out (YAML).

Set ``UPDATE_GOLDEN=1`` to rewrite the golden files after an intended change, then
review the diff like any other code change.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format

from meshline.core.resource import Resource
from meshline.kinds import default_kinds
from meshline.policies import plugins
from meshline.render.mesh_snapshot import MeshSnapshot
from meshline.render.render import RenderResult, render
from meshline.testing.policy_kit import load_applied
from meshline.xds.snapshot import SHORT


def load_resources(text: str) -> list[Resource]:
    """The resources of a golden input, refused (RefusedInput) when ``meshline apply`` would
    refuse them: the same schema, kind checks and apply-time mesh checks."""
    return load_applied(text)


def render_named(resources: list[Resource], dataplane: str, mesh: str = "default") -> RenderResult:
    mesh_res = next((r for r in resources if r.kind == "Mesh" and r.name == mesh), None)
    if mesh_res is None:
        mesh_res = default_kinds().decode({"kind": "Mesh", "name": mesh})
    in_mesh = [r for r in resources if r.mesh == mesh]
    snapshot = MeshSnapshot.build(mesh_res, in_mesh, revision=1)
    dp = snapshot.dataplanes[dataplane]
    return render(dp, snapshot, plugins())


def to_yaml(result: RenderResult) -> str:
    out: dict[str, Any] = {}
    for type_url in sorted(result.snapshot.slots, key=lambda t: SHORT.get(t, t)):
        slot = result.snapshot.slots[type_url]
        out[SHORT.get(type_url, type_url)] = [
            json.loads(json_format.MessageToJson(slot.resources[name].any, sort_keys=True)) for name in sorted(slot.resources)
        ]
    out["policies"] = [a.to_json() for a in result.applied]
    return yaml.safe_dump(out, sort_keys=False, width=120)


def check_golden(input_path: Path, dataplane: str, golden_path: Path, mesh: str = "default") -> None:
    result = render_named(load_resources(input_path.read_text()), dataplane, mesh)
    actual = to_yaml(result)
    if os.environ.get("UPDATE_GOLDEN") == "1" or not golden_path.exists():
        golden_path.parent.mkdir(parents=True, exist_ok=True)
        golden_path.write_text(actual)
        if os.environ.get("UPDATE_GOLDEN") != "1":
            raise AssertionError(f"{golden_path} did not exist; wrote it. Review it and re-run.")
        return
    expected = golden_path.read_text()
    assert actual == expected, (
        f"rendered config for {dataplane} differs from {golden_path};"
        " if the change is intended, re-run with UPDATE_GOLDEN=1 and review the diff"
    )
