"""HealthCheck golden files, each also checked by the real Envoy (--mode validate)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.policies.timeout.golden_cases import check_feature, features

HERE = Path(__file__).parent


@pytest.mark.parametrize("feature", features(HERE))
def test_feature_golden(feature: str, tmp_path: Path) -> None:
    check_feature(HERE, feature, "web-1", tmp_path)
