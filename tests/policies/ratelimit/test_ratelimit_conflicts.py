"""Two RateLimit (or FaultInjection) policies for exactly the same traffic are refused by the API,
with the field path and the fix."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from meshline.core.errors import ValidationError
from meshline.testing.mesh import MeshHarness

FIRST = """
kind: RateLimit
mesh: default
name: orders-a
spec:
  sources: [{match: {service: '*'}}]
  destinations: [{match: {service: orders}}]
  conf: {local: {http: {requests: 10}}}
"""


@pytest.fixture
def control_plane(tmp_path: Path) -> Iterator[MeshHarness]:
    with MeshHarness(tmp_path) as mesh:
        yield mesh


def test_same_sources_and_destinations_are_refused(control_plane: MeshHarness) -> None:
    control_plane.apply(FIRST)
    # the same traffic written differently (sources left out = every caller): still a conflict
    second = FIRST.replace("orders-a", "orders-b").replace("  sources: [{match: {service: '*'}}]\n", "")
    with pytest.raises(ValidationError) as info:
        control_plane.apply(second)
    message = str(info.value)
    assert (
        "spec.destinations: RateLimit 'orders-a' already selects the same sources and destinations" in message
    )
    assert "merge them into one policy" in message
    assert [r["name"] for r in control_plane.api.get("/api/v1/meshes/default/ratelimits")["items"]] == [
        "orders-a"
    ]


def test_a_conflict_inside_one_apply_is_refused_and_nothing_is_written(control_plane: MeshHarness) -> None:
    faults = """
kind: FaultInjection
mesh: default
name: chaos-N
spec:
  destinations: [{match: {service: orders}}]
  conf: {faults: [{abort: {percentage: 10, httpStatus: 503}}]}
"""
    with pytest.raises(ValidationError) as info:
        control_plane.apply(faults.replace("N", "1") + "---" + faults.replace("N", "2"))
    assert "FaultInjection 'chaos-2' already selects the same sources and destinations" in str(info.value)
    assert control_plane.api.get("/api/v1/meshes/default/faultinjections")["items"] == []


def test_different_callers_or_destinations_are_not_conflicts(control_plane: MeshHarness) -> None:
    control_plane.apply(FIRST)
    control_plane.apply(FIRST.replace("orders-a", "orders-web").replace("'*'", "web"))
    control_plane.apply(
        FIRST.replace("orders-a", "orders-v2").replace("{service: orders}", "{service: orders, version: v2}")
    )
    control_plane.apply(FIRST)  # re-applying a policy is not a conflict with itself
    names = [r["name"] for r in control_plane.api.get("/api/v1/meshes/default/ratelimits")["items"]]
    assert names == ["orders-a", "orders-v2", "orders-web"]
