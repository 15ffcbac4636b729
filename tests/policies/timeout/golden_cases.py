"""Golden-test plumbing shared by the five resilience policies' test modules.

Each policy directory has ``features/<feature>.yaml`` (policies, sometimes with an
HTTPRoute) rendered on top of ``timeout/mesh.input.yaml`` for one caller, compared with
``golden/<feature>.<caller>.golden.yaml`` and checked by the real Envoy (--mode validate).
UPDATE_GOLDEN=1 rewrites the golden files; review the diff.
"""

from __future__ import annotations

from pathlib import Path

from meshline.render.render import RenderResult
from meshline.testing.golden import check_golden, load_resources, render_named
from meshline.testing.policy_kit import envoy_accepts

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
    golden = policy_dir / "golden" / f"{feature}.{dataplane}.golden.yaml"
    check_golden(input_file(policy_dir, feature, tmp_path), dataplane, golden)
    envoy_accepts(render_feature(policy_dir, feature, dataplane, tmp_path), tmp_path / "envoy")
