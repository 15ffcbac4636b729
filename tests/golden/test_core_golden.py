"""Golden files for the base generators (no policies): inbound/outbound for each protocol and mTLS mode."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshline.testing.golden import check_golden

HERE = Path(__file__).parent / "core"


@pytest.mark.parametrize("dataplane", ["web-1", "orders-v1", "payments-1", "grpc-echo-1"])
def test_strict_mesh(dataplane: str) -> None:
    check_golden(HERE / "mesh.input.yaml", dataplane, HERE / f"{dataplane}.golden.yaml")


@pytest.mark.parametrize("mode", ["permissive", "disabled"])
def test_mtls_modes(mode: str, tmp_path: Path) -> None:
    src = (HERE / "mesh.input.yaml").read_text().replace("mode: strict", f"mode: {mode}")
    (tmp_path / "in.yaml").write_text(src)
    check_golden(tmp_path / "in.yaml", "orders-v1", HERE / f"orders-v1.{mode}.golden.yaml")
