"""Sections are identified by a structured id: unique within a rendering, the key telemetry
joins a log entry to its section's policies on (not the display label)."""

from __future__ import annotations

from pathlib import Path

from meshline.policies import plugins
from meshline.render.mesh_snapshot import MeshSnapshot
from meshline.render.render import render
from meshline.render.sections import SectionId
from meshline.telemetry import render_step
from meshline.testing.golden import load_resources

HERE = Path(__file__).parent
TRANSPARENT = HERE / "transparent" / "mesh.input.yaml"
RESILIENCE = HERE.parent / "policies" / "timeout" / "mesh.input.yaml"


def rendered(path: Path, dataplane: str):  # type: ignore[no-untyped-def]
    resources = load_resources(path.read_text())
    mesh = next(r for r in resources if r.kind == "Mesh")
    snap = MeshSnapshot.build(mesh, [r for r in resources if r.mesh == "default"], revision=1)
    return render(snap.dataplanes[dataplane], snap, [*plugins(), render_step.PLUGIN])


def test_every_section_of_a_sidecar_has_its_own_id() -> None:
    result = rendered(RESILIENCE, "web-1")
    ids = [p.id for p in result.sections]
    assert len(ids) == len(set(ids))
    assert SectionId("sidecar", "outbound", 15001) in ids
    assert str(SectionId("sidecar", "outbound", 15001)) == "sidecar/outbound/15001"


def test_transparent_chains_sharing_one_port_are_told_apart() -> None:
    result = rendered(TRANSPARENT, "web-1")
    ids = [p.id for p in result.sections]
    assert len(ids) == len(set(ids))
    # every policy entry names the section it shaped; one capture port holds many services
    shaped = {a.section for a in result.applied}
    assert None not in shaped
    entries = [a for a in result.applied if a.section is not None and a.section.role == "transparent-outbound"]
    assert entries, "the input has policies on a transparent outbound"
    for a in entries:  # the id names the service its chain is for, not just the shared port 80
        assert a.section is not None and a.section.port == 80
        assert a.target.startswith(f"outbound {a.section.name} ")
