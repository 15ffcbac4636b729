"""Golden files for HTTPRoute, per feature and section the routes shaped
(``golden/<feature>.<caller>.<role>-<port>.golden.yaml``); every section that differs from the
mesh without the feature must have one. Each whole rendering is also checked by the real
Envoy (--mode validate).

The input is the demo's shape (mesh.input.yaml) plus one feature file from features/.
UPDATE_GOLDEN=1 rewrites the golden files; review the diff.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from meshline.testing.golden import load_resources, render_named
from meshline.testing.policy_kit import check_policy_goldens, envoy_accepts

HERE = Path(__file__).parent
FEATURES = sorted(p.stem for p in (HERE / "features").glob("*.yaml"))
# Which caller each feature is seen from (the route only shapes that caller's outbound).
KINDS = frozenset({"HTTPRoute"})
CALLERS = {"grpc": ["web-1"], "precedence": ["web-1", "admin-1"]}


def _input(feature: str, tmp_path: Path) -> Path:
    text = (HERE / "mesh.input.yaml").read_text() + "\n---\n" + (HERE / "features" / f"{feature}.yaml").read_text()
    path = tmp_path / f"{feature}.input.yaml"
    path.write_text(text)
    return path


CASES = [(f, dp) for f in FEATURES for dp in CALLERS.get(f, ["web-1"])]


@pytest.mark.parametrize(("feature", "dataplane"), CASES, ids=[f"{f}-{d}" for f, d in CASES])
def test_feature_golden(feature: str, dataplane: str, tmp_path: Path) -> None:
    resources = load_resources(_input(feature, tmp_path).read_text())
    result = render_named(resources, dataplane)
    baseline = render_named([r for r in resources if r.kind not in KINDS], dataplane)
    check_policy_goldens(result, baseline, KINDS, HERE / "golden", f"{feature}.{dataplane}")
    envoy_accepts(result, tmp_path / "envoy")


def test_a_caller_no_route_selects_is_untouched(tmp_path: Path) -> None:
    """The canary names web as its source: admin's outbound to orders keeps the plain default route."""
    with_route = render_named(load_resources(_input("split", tmp_path).read_text()), "admin-1")
    without = render_named(load_resources((HERE / "mesh.input.yaml").read_text()), "admin-1")
    assert with_route.snapshot.versions() == without.snapshot.versions()
    assert with_route.applied == ()
