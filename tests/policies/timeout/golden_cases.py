"""Golden-test plumbing shared by the five resilience policies' test modules.

Each policy directory has ``features/<feature>.yaml`` (policies, sometimes with an
HTTPRoute) rendered on top of ``timeout/mesh.input.yaml`` for one caller. Goldens are per
section under test: ``golden/<feature>.<caller>.<role>-<port>.golden.yaml`` for each
section the feature's policies shaped; every other section must be exactly what it is
without the feature. The whole rendering is checked by the real Envoy (--mode validate).
UPDATE_GOLDEN=1 rewrites the golden files; review the diff.
"""

from __future__ import annotations

from pathlib import Path

from meshline.render.render import RenderResult
from meshline.testing.golden import load_resources, render_named
from meshline.testing.policy_kit import check_section_golden, envoy_accepts

MESH_INPUT = Path(__file__).parent / "mesh.input.yaml"


def features(policy_dir: Path) -> list[str]:
    return sorted(p.stem for p in (policy_dir / "features").glob("*.yaml"))


def input_file(policy_dir: Path, feature: str, tmp_path: Path) -> Path:
    text = MESH_INPUT.read_text() + "\n---\n" + (policy_dir / "features" / f"{feature}.yaml").read_text()
    path = tmp_path / f"{feature}.input.yaml"
    path.write_text(text)
    return path


def render_feature(policy_dir: Path, feature: str, dataplane: str, tmp_path: Path) -> RenderResult:
    return render_named(load_resources(input_file(policy_dir, feature, tmp_path).read_text()), dataplane)


def render_plain(dataplane: str) -> RenderResult:
    return render_named(load_resources(MESH_INPUT.read_text()), dataplane)


RESILIENCE_KINDS = frozenset({"Timeout", "Retry", "CircuitBreaker", "HealthCheck", "LoadBalancer"})


def check_feature(policy_dir: Path, feature: str, dataplane: str, tmp_path: Path) -> None:
    ours = {(r.kind, r.name) for r in load_resources((policy_dir / "features" / f"{feature}.yaml").read_text())}
    result = render_feature(policy_dir, feature, dataplane, tmp_path)
    plain = {p.id: p for p in render_plain(dataplane).sections}
    expected = set()
    for part in result.sections:
        if any((a.kind, a.name) in ours for a in part.applied):
            golden = policy_dir / "golden" / f"{feature}.{dataplane}.{part.id.role}-{part.id.port}.golden.yaml"
            expected.add(golden.name)
            check_section_golden(result, part.id, golden)
        else:  # not under test: the feature must leave it alone
            before = plain[part.id]
            digests = {t: {n: p.digest for n, p in items.items()} for t, items in part.resources.items()}
            assert digests == {t: {n: p.digest for n, p in items.items()} for t, items in before.resources.items()}, (
                f"{feature} changed section {part.id}, which none of its policies shaped")
    assert expected, f"no policy of {feature} shaped any section of {dataplane}"
    present = {p.name for p in (policy_dir / "golden").glob(f"{feature}.{dataplane}.*golden.yaml")}
    assert present == expected, f"stale or missing goldens for {feature}: {sorted(present ^ expected)}"
    envoy_accepts(result, tmp_path / "envoy")
