"""Golden files for RateLimit: local (HTTP, TCP) and global filters on each destination's inbound."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshline.testing.golden import check_golden

HERE = Path(__file__).parent


@pytest.mark.parametrize("dataplane", ["orders-v1", "grpc-echo-1", "payments-1"])
def test_strict_mesh(dataplane: str) -> None:
    check_golden(HERE / "mesh.input.yaml", dataplane, HERE / f"{dataplane}.golden.yaml")


def test_without_mtls_only_the_every_caller_limits_apply(tmp_path: Path) -> None:
    src = (HERE / "mesh.input.yaml").read_text().replace("mode: strict", "mode: disabled")
    (tmp_path / "in.yaml").write_text(src)
    check_golden(tmp_path / "in.yaml", "orders-v1", HERE / "orders-v1.disabled.golden.yaml")
