"""Test tiers: every test is marked by the folder it lives in, so one tier runs alone
(``./scripts/test -m unit``, ``-m "not e2e and not bench"``) and a tier's cost is visible."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# The CLI's contexts file (meshline.api.contexts): never the developer's own. Tests that
# need one set MESHLINE_CONFIG themselves.
os.environ["MESHLINE_CONFIG"] = os.path.join(tempfile.mkdtemp(prefix="meshline-test-config-"), "config.yaml")

TIERS = {
    "unit": "unit",
    "golden": "golden",
    "policies": "golden",
    "render": "golden",
    "store": "store",
    "e2e": "e2e",
    "security": "security",
    "browser": "browser",
    "bench": "bench",
}
ROOT = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        try:
            folder = Path(str(item.fspath)).relative_to(ROOT).parts[0]
        except ValueError:
            continue
        tier = TIERS.get(folder)
        if tier is not None:
            item.add_marker(getattr(pytest.mark, tier))
