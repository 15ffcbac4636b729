"""Golden files for RateLimit: local (HTTP, TCP) and global filters on each destination's
inbound, per section the limits shaped (``golden/<case>.<role>-<port>.golden.yaml``); every
section that differs from the same mesh without them must have one. Each whole rendering is
also checked by the real Envoy (``--mode validate``). ``UPDATE_GOLDEN=1`` rewrites
``golden/``; review the diff.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from meshline.testing.golden import load_resources, render_named
from meshline.testing.policy_kit import check_policy_goldens, envoy_accepts

HERE = Path(__file__).parent
KINDS = frozenset({"RateLimit"})


def _check(text: str, dataplane: str, stem: str, tmp_path: Path) -> None:
    resources = load_resources(text)
    result = render_named(resources, dataplane)
    baseline = render_named([r for r in resources if r.kind not in KINDS], dataplane)
    check_policy_goldens(result, baseline, KINDS, HERE / "golden", stem)
    envoy_accepts(result, tmp_path / "envoy")


@pytest.mark.parametrize("dataplane", ["orders-v1", "grpc-echo-1", "payments-1"])
def test_strict_mesh(dataplane: str, tmp_path: Path) -> None:
    _check((HERE / "mesh.input.yaml").read_text(), dataplane, dataplane, tmp_path)


def test_without_mtls_only_the_every_caller_limits_apply(tmp_path: Path) -> None:
    src = (HERE / "mesh.input.yaml").read_text().replace("mode: strict", "mode: disabled")
    _check(src, "orders-v1", "orders-v1.disabled", tmp_path)
