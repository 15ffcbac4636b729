"""Golden files for FaultInjection: what each destination's inbound gets, per section the
faults shaped (``golden/<case>.<role>-<port>.golden.yaml``); every section that differs from
the same mesh without them must have one. Each whole rendering is also checked by the real
Envoy (``--mode validate``). ``UPDATE_GOLDEN=1`` rewrites ``golden/``; review the diff.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from meshline.testing.golden import load_resources, render_named
from meshline.testing.policy_kit import check_policy_goldens, envoy_accepts, sections_changed_by

HERE = Path(__file__).parent
KINDS = frozenset({"FaultInjection"})


def _check(text: str, dataplane: str, stem: str, tmp_path: Path) -> None:
    resources = load_resources(text)
    result = render_named(resources, dataplane)
    baseline = render_named([r for r in resources if r.kind not in KINDS], dataplane)
    check_policy_goldens(result, baseline, KINDS, HERE / "golden", stem)
    envoy_accepts(result, tmp_path / "envoy")


@pytest.mark.parametrize("dataplane", ["orders-v1", "orders-v2", "grpc-echo-1"])
def test_strict_mesh(dataplane: str, tmp_path: Path) -> None:
    _check((HERE / "mesh.input.yaml").read_text(), dataplane, dataplane, tmp_path)


def test_a_tcp_destination_gets_no_fault_filter(tmp_path: Path) -> None:
    """payments-delay selects payments, a TCP service: faults are HTTP only, so nothing changes."""
    resources = load_resources((HERE / "mesh.input.yaml").read_text())
    result = render_named(resources, "payments-1")
    baseline = render_named([r for r in resources if r.kind not in KINDS], "payments-1")
    assert sections_changed_by(result, baseline) == []
    assert not [a for a in result.applied if a.kind in KINDS]
    envoy_accepts(result, tmp_path / "envoy")


def test_without_mtls_callers_are_not_told_apart(tmp_path: Path) -> None:
    """No identity: the web-only policy cannot apply; every caller gets the '*' one."""
    src = (HERE / "mesh.input.yaml").read_text().replace("mode: strict", "mode: disabled")
    _check(src, "orders-v2", "orders-v2.disabled", tmp_path)
