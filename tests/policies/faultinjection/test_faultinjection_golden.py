"""Golden files for FaultInjection: what each destination's inbound gets."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshline.testing.golden import check_golden

HERE = Path(__file__).parent


@pytest.mark.parametrize("dataplane", ["orders-v1", "orders-v2", "grpc-echo-1", "payments-1"])
def test_strict_mesh(dataplane: str) -> None:
    check_golden(HERE / "mesh.input.yaml", dataplane, HERE / f"{dataplane}.golden.yaml")


def test_without_mtls_callers_are_not_told_apart(tmp_path: Path) -> None:
    """No identity: the web-only policy cannot apply; every caller gets the '*' one."""
    src = (HERE / "mesh.input.yaml").read_text().replace("mode: strict", "mode: disabled")
    (tmp_path / "in.yaml").write_text(src)
    check_golden(tmp_path / "in.yaml", "orders-v2", HERE / "orders-v2.disabled.golden.yaml")
