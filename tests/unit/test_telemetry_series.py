"""Golden signals over time (telemetry.series): 10 s buckets for an hour per service, version
and edge; points add up to what was counted, old buckets are reused, and every mesh's keys and
cells stay within their bounds."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from meshline.telemetry.intake import TelemetryIntake, TelemetryLimits
from meshline.telemetry.record import LogRecord
from meshline.telemetry.series import BUCKETS, STEP_S, MeshSeries, SeriesLimits


def record(t: float, **kw: Any) -> LogRecord:
    base: dict[str, Any] = dict(time=t, mesh="default", dataplane="web-1", direction="outbound", source="web",
                                destination="orders", destination_version="v1", method="GET", path="/",
                                status=200, duration_ms=5.0)
    base.update(kw)
    return LogRecord(**base)


def test_points_count_each_bucket_and_say_success_and_latency() -> None:
    intake = TelemetryIntake(clock=lambda: 10_055.0)
    intake.ingest([record(10_000.0 + i, duration_ms=float(i + 1)) for i in range(30)])  # 10000..10029
    intake.ingest([record(10_031.0, status=503), record(10_032.0, destination_version="v2")])
    intake.ingest([record(10_033.0, direction="inbound")])  # the callee's half: not counted again
    data = intake.meshes["default"].series.service("orders", 10_055.0, 300)
    points = data["service"]
    assert len(points) == 300 // STEP_S and points[-1]["t"] == 10_050
    by_t = {p["t"]: p for p in points}
    assert [by_t[t]["requests"] for t in (10_000, 10_010, 10_020, 10_030, 10_040)] == [10, 10, 10, 2, 0]
    assert by_t[10_030]["failures"] == 1 and by_t[10_030]["successRate"] == 0.5
    assert by_t[10_000]["rps"] == 1.0 and by_t[10_040]["successRate"] is None
    assert by_t[10_000]["p50"] is not None and 5.0 <= by_t[10_000]["p50"] <= 5.0 * 1.04
    assert by_t[10_000]["p99"] == 10.0  # clipped to the largest latency seen
    assert sum(p["requests"] for p in points) == 32
    assert set(data["versions"]) == {"v1", "v2"} and sum(p["requests"] for p in data["versions"]["v2"]) == 1
    assert list(data["inbound"]) == ["web"] and data["outbound"] == {}
    web = intake.meshes["default"].series.service("web", 10_055.0, 300)
    assert list(web["outbound"]) == ["orders"] and sum(p["requests"] for p in web["service"]) == 0


def test_a_slot_is_reused_an_hour_later_and_older_entries_are_dropped() -> None:
    s = MeshSeries(SeriesLimits())
    s.count(record(0.0))
    hour = STEP_S * BUCKETS
    s.count(record(float(hour)))  # same slot, an hour later: the old bucket goes
    s.count(record(1.0))  # older than what the slot holds now: not counted anywhere
    points = s.service("orders", float(hour), hour)["service"]
    assert sum(p["requests"] for p in points) == 1 and points[-1]["requests"] == 1
    cells = sum(k.cells for k in s.keys.values())
    assert s.cells == cells


def test_keys_and_cells_stay_within_their_bounds() -> None:
    limits = TelemetryLimits(series=SeriesLimits(keys=10, cells=80))
    intake = TelemetryIntake(limits=limits)
    for i in range(500):
        intake.ingest([record(1000.0 + i * 7, destination=f"svc-{i % 40}", duration_ms=1.0 + i)])
    sizes = intake.sizes("default")
    assert sizes["seriesKeys"] <= 10 and sizes["seriesCells"] <= 80
    m = intake.meshes["default"].series
    assert m.cells == sum(k.cells for k in m.keys.values()) and m.evicted > 0


@pytest.mark.parametrize("span", ["5m", "1h"])
def test_the_series_answer_is_the_json_of_its_points_byte_for_byte(span: str) -> None:
    """The route assembles its answer from each bucket's remembered JSON; it must be exactly
    the JSON of the points (what the dashboard's charts and the docs read)."""
    from aiohttp.test_utils import make_mocked_request

    from meshline.api.auth import Principal
    from meshline.api.server import PRINCIPAL
    from meshline.telemetry.history_api import HistoryApi
    from meshline.telemetry.series import SPANS

    now = 10_055.25
    intake = TelemetryIntake(clock=lambda: now)
    intake.ingest([record(10_000.0 + i * 7, duration_ms=float(i + 1), status=(200, 503)[i % 2],
                          destination_version=f"v{i % 3}") for i in range(40)])
    intake.ingest([record(10_001.0, source="web", destination="web-caller")])
    api = HistoryApi(intake)
    for service in ("orders", "web", "nobody"):
        for _ in range(2):  # the second from the remembered JSON
            request = make_mocked_request("GET", f"/api/v1/meshes/default/services/{service}/series?span={span}",
                                          match_info={"mesh": "default", "service": service})
            request[PRINCIPAL] = Principal("test")
            response = asyncio.run(api.series(request))
            data = intake.meshes["default"].series.service(service, now, SPANS[span])
            expected = {"mesh": "default", "service": service, "span": span, "stepSeconds": STEP_S,
                        "keptSeconds": 3600, "at": now, **data}
            assert response.text == json.dumps(expected, separators=(",", ":"))
            assert response.content_type == "application/json" and response.charset == "utf-8"
    empty = HistoryApi(TelemetryIntake(clock=lambda: now))
    request = make_mocked_request("GET", "/x", match_info={"mesh": "default", "service": "orders"})
    request[PRINCIPAL] = Principal("test")
    assert json.loads(asyncio.run(empty.series(request)).text) == {
        "mesh": "default", "service": [], "span": "15m", "stepSeconds": STEP_S, "keptSeconds": 3600, "at": now,
        "versions": {}, "inbound": {}, "outbound": {}}
