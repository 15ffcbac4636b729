"""Helpers for the benchmark tests: skip when a program is missing, except in CI."""

from __future__ import annotations

import os

import pytest
from benchmarks import tools


def require_programs(*names: str) -> None:
    """Skip the test if a program is missing -- but fail in CI, where .ci/run installs them."""
    missing = [name for name in names if tools.find(name) is None]
    if not missing:
        return
    message = f"needs {', '.join(missing)} (apt-get install -y {' '.join(missing)})"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message}: CI must install it")
    pytest.skip(message)
