"""TCPRoute: golden files per section the routes shaped (``golden/<dataplane>.<role>-<port>.golden.yaml``;
every section that differs from the mesh without them must have one), the whole rendering
checked by the real Envoy, and validation. ``UPDATE_GOLDEN=1`` rewrites ``golden/``; review the diff."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from meshline.core.errors import ValidationError
from meshline.kinds import default_kinds
from meshline.testing.golden import load_resources, render_named
from meshline.testing.policy_kit import check_policy_goldens, envoy_accepts, sections_changed_by

HERE = Path(__file__).parent
KINDS = default_kinds()


@pytest.mark.parametrize("dataplane", ["web-1", "orders-v1"])
def test_golden(dataplane: str, tmp_path: Path) -> None:
    """web-1: its own 80/20 split (more specific source); orders-v1: the mesh-wide migration."""
    resources = load_resources((HERE / "mesh.input.yaml").read_text())
    result = render_named(resources, dataplane)
    baseline = render_named([r for r in resources if r.kind != "TCPRoute"], dataplane)
    check_policy_goldens(result, baseline, frozenset({"TCPRoute"}), HERE / "golden", dataplane)
    envoy_accepts(result, tmp_path)


def test_http_outbounds_are_untouched() -> None:
    resources = load_resources((HERE / "mesh.input.yaml").read_text())
    result = render_named(resources, "web-1")
    assert {a.target for a in result.applied} == {"outbound payments (port 15432)"}
    baseline = render_named([r for r in resources if r.kind != "TCPRoute"], "web-1")
    assert sections_changed_by(result, baseline) == ["sidecar/outbound/15432"]


def tcp_route(**spec: Any) -> dict[str, Any]:
    return {"kind": "TCPRoute", "mesh": "default", "name": "t",
            "spec": {"destinations": [{"match": {"service": "payments"}}], **spec}}


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (tcp_route(), "spec.backends: is required"),
        (tcp_route(backends=[]), "spec.backends: list should have at least 1 item"),
        (tcp_route(backends=[{"tags": {"version": "v1"}, "weight": 0}]), "spec.backends: weights add up to 0"),
        (tcp_route(backends=[{"service": "Bad_Name"}]), "spec.backends[0].service: must be 1-63 lowercase"),
        (tcp_route(backends=[{"tags": {"version": "v1"}}, {"tags": {"version": "v1"}}]),
         "spec.backends[1]: is the same backend as backends[0]"),
        (tcp_route(backends=[{"tags": {"version": "v1"}}], destinations=[{"match": {"service": "payments", "zone": "a"}}]),
         "spec.destinations[0].match.zone: a route's destination is a whole service"),
    ],
)
def test_bad_tcp_routes_name_the_field(doc: dict[str, Any], expected: str) -> None:
    with pytest.raises(ValidationError) as info:
        KINDS.decode(doc)
    found = [str(p) for p in info.value.problems]
    assert any(p.startswith(expected) for p in found), found
