"""Golden files for TrafficPermission (allow, deny, dry-run, L4, L7, precedence, plaintext callers),
each also checked by the real Envoy (``--mode validate``).

Inputs: ``features/<case>.yaml`` (a Mesh and permissions) plus ``dataplanes.yaml``.
``UPDATE_GOLDEN=1`` rewrites ``golden/``; review the diff.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from meshline.testing.golden import check_golden, load_resources, render_named
from meshline.testing.policy_kit import envoy_accepts

HERE = Path(__file__).parent
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


def _input(case: str, tmp_path: Path) -> Path:
    path = tmp_path / f"{case}.yaml"
    path.write_text(
        (HERE / "features" / f"{case}.yaml").read_text() + "\n---\n" + (HERE / "dataplanes.yaml").read_text()
    )
    return path


@pytest.mark.parametrize(("case", "dataplane"), CASES)
def test_golden(case: str, dataplane: str, tmp_path: Path) -> None:
    src = _input(case, tmp_path)
    check_golden(src, dataplane, HERE / "golden" / f"{case}.{dataplane}.golden.yaml")
    envoy_accepts(render_named(load_resources(src.read_text()), dataplane), tmp_path / "envoy")
