"""Golden files for TrafficPermission (allow, deny, dry-run, L4, L7, precedence, plaintext callers),
per section the permissions shaped; each whole rendering is also checked by the real Envoy
(``--mode validate``).

Inputs: ``features/<case>.yaml`` (a Mesh and permissions) plus ``dataplanes.yaml``. Every
section that differs from the same mesh without its permissions must have a golden
(``golden/<case>.<dataplane>.<role>-<port>.golden.yaml``). ``UPDATE_GOLDEN=1`` rewrites
``golden/``; review the diff.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from meshline.testing.golden import load_resources, render_named
from meshline.testing.policy_kit import check_policy_goldens, envoy_accepts

HERE = Path(__file__).parent
KINDS = frozenset({"TrafficPermission"})
CASES = [
    ("allow", "orders-v1"),
    ("allow", "inventory-1"),
    ("deny", "orders-v1"),
    ("dry-run", "orders-v1"),
    ("dry-run", "orders-v2"),
    ("l4", "payments-1"),
    ("precedence", "orders-v1"),
    ("plaintext", "inventory-1"),
]


@pytest.mark.parametrize(("case", "dataplane"), CASES)
def test_golden(case: str, dataplane: str, tmp_path: Path) -> None:
    text = (HERE / "features" / f"{case}.yaml").read_text() + "\n---\n" + (HERE / "dataplanes.yaml").read_text()
    resources = load_resources(text)
    result = render_named(resources, dataplane)
    baseline = render_named([r for r in resources if r.kind not in KINDS], dataplane)
    check_policy_goldens(result, baseline, KINDS, HERE / "golden", f"{case}.{dataplane}")
    envoy_accepts(result, tmp_path / "envoy")
