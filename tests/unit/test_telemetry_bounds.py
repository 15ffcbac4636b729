"""The intake's bounds (TelemetryLimits, docs/observability.md): every index stays within its
count and byte budget however the entries vary, the bookkeeping matches what is kept, the
least recently updated key goes first, and reading never makes anything."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from meshline.core import slices as slices_module
from meshline.core.errors import Unavailable
from meshline.telemetry.intake import MeshTelemetry, TapFilter, TelemetryIntake, TelemetryLimits
from meshline.telemetry.record import MAX_POLICIES, MAX_TEXT, LogRecord, clip, is_counted, record_bytes
from meshline.telemetry.window import RollingStats

SMALL = TelemetryLimits(records=50, record_bytes=40_000, services=5, edges=7, paths=3, cells=60, pending=4,
                        taps=2, tap_queue=3)


def record(i: int, **kw: Any) -> LogRecord:
    base: dict[str, Any] = dict(time=1000.0 + i % 290, mesh="default", dataplane="web-1", direction="outbound",
                                source=f"web-{i % 11}", destination=f"svc-{i}", method="GET", path=f"/p/{i}",
                                status=200, request_id=f"r{i}", duration_ms=1.0 + (i * 37) % 900)
    base.update(kw)
    return LogRecord(**base)


def cells_of(stats: RollingStats) -> int:
    return sum(1 + len(b.hist) for b in stats._seconds)


def check_bookkeeping(m: MeshTelemetry) -> None:
    indexes = (m.services, m.edges, m.paths)
    assert m.cells == sum(cells_of(s) for index in indexes for s in index.values())
    assert m.record_bytes == sum(record_bytes(r) for r, _ in m.recent)
    assert set(m.edge_protocol) <= set(m.edges)
    # the failures index is exactly the kept records a failures listing would pick
    picked = [r for r, _ in m.recent if TapFilter(status="failed,4xx").matches(r) and (is_counted(r) or r.mirrored)]
    assert list(m.recent_failures) == picked


def test_every_index_stays_within_its_bounds() -> None:
    intake = TelemetryIntake(limits=SMALL, clock=lambda: 1300.0)
    for i in range(2000):
        intake.ingest([record(i, status=(200, 503, 404, 0, 200, 302)[i % 6]),
                       record(i, direction="inbound", source=f"caller-{i}", mtls=i % 2 == 0)])
    sizes = intake.sizes("default")
    assert sizes["services"] <= SMALL.services and sizes["edges"] <= SMALL.edges and sizes["paths"] <= SMALL.paths
    assert sizes["cells"] <= SMALL.cells and sizes["edgeTls"] <= SMALL.edges
    assert sizes["records"] <= SMALL.records and sizes["recordBytes"] <= SMALL.record_bytes
    assert sizes["requestIds"] <= SMALL.records
    check_bookkeeping(intake.meshes["default"])
    assert intake.meshes["default"].evicted > 0


def test_records_are_bounded_by_bytes_too() -> None:
    big = "/" + "x" * (MAX_TEXT - 1)
    intake = TelemetryIntake(limits=TelemetryLimits(records=1000, record_bytes=30_000))
    intake.ingest([clip(record(i, path=big, authority=big, details=big)) for i in range(200)])
    m = intake.meshes["default"]
    assert 0 < len(m.recent) < 200 and m.record_bytes <= 30_000
    check_bookkeeping(m)
    assert intake.request("default", "r0") == [] and intake.request("default", "r199")  # oldest out first


def test_the_least_recently_updated_key_goes_first() -> None:
    intake = TelemetryIntake(limits=TelemetryLimits(services=2))
    for name in ("a", "b", "a", "c"):
        intake.ingest([record(0, destination=name)])
    assert list(intake.meshes["default"].services) == ["a", "c"]


def test_the_cell_budget_spans_all_three_indexes() -> None:
    """Many seconds and latencies for few keys: the budget, not the key counts, evicts."""
    limits = TelemetryLimits(cells=100)
    intake = TelemetryIntake(limits=limits)
    for i in range(500):
        intake.ingest([record(i, destination=f"s{i % 3}", path=f"/p{i % 2}")])
    m = intake.meshes["default"]
    assert m.cells <= limits.cells and m.evicted > 0
    check_bookkeeping(m)


def test_entries_waiting_for_their_other_half_are_bounded() -> None:
    intake = TelemetryIntake(limits=SMALL, clock=lambda: 1000.0)
    sub = intake.subscribe("default", TapFilter())
    failed = [record(i, status=503, details="via_upstream") for i in range(SMALL.pending + 2)]
    intake.ingest(failed)
    assert len(intake.meshes["default"].pending) == SMALL.pending
    first = sub.queue.get_nowait()  # pushed out without its other half, the oldest first
    assert first is not None and first.request_id == "r0"


def test_taps_and_their_queues_are_bounded() -> None:
    intake = TelemetryIntake(limits=SMALL)
    subs = [intake.subscribe("default", TapFilter()) for _ in range(SMALL.taps)]
    with pytest.raises(Unavailable, match="taps are open"):
        intake.subscribe("default", TapFilter())
    intake.ingest([record(i) for i in range(10)])
    assert subs[0].queue.qsize() == SMALL.tap_queue and subs[0].dropped == 10 - SMALL.tap_queue
    intake.unsubscribe(subs[0])
    intake.subscribe("default", TapFilter())


async def test_reading_never_adds_a_mesh() -> None:
    intake = TelemetryIntake()
    assert (await intake.stats("nope"))["services"] == []
    assert intake.request("nope", "x") == [] and intake.recent("nope", TapFilter(), 10) == []
    assert intake.meshes == {}


async def test_stats_give_the_loop_back_while_they_are_computed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(slices_module, "SLICE_S", 0.0)  # a slice per key
    intake = TelemetryIntake(clock=lambda: 1300.0)
    intake.ingest([record(i) for i in range(200)])
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    data = await intake.stats("default", paths=10)
    task.cancel()
    assert len(data["services"]) == 200
    assert ticks >= 200  # other tasks ran between the keys


def test_one_entry_keeps_at_most_so_much() -> None:
    huge = "y" * (100 * MAX_TEXT)
    r = clip(record(0, path=huge, source=huge, explanation=huge, policies=[huge] * 1000, flags=["UH"] * 1000))
    assert len(r.path) == len(r.source) == len(r.explanation) == MAX_TEXT
    assert len(r.policies) == len(r.flags) == MAX_POLICIES
    assert record_bytes(r) < 200 * MAX_TEXT


def test_recent_failures_of_a_service_are_those_a_full_scan_finds() -> None:
    intake = TelemetryIntake(limits=SMALL, clock=lambda: 1300.0)
    for i in range(500):
        intake.ingest([record(i, destination=f"svc-{i % 3}", status=(200, 503, 404, 0, 200)[i % 5])])
    m = intake.meshes["default"]
    check_bookkeeping(m)
    for service in ("svc-0", "svc-1", "web-2", ""):
        flt = TapFilter(service=service, status="failed,4xx")
        scan = [r for r, _ in m.recent if (is_counted(r) or r.mirrored) and flt.matches(r)][-7:]
        assert intake.recent("default", flt, 7) == scan and (scan or service == "web-2")
