"""The telemetry intake's per-version golden signals, as the rollout controller reads them:
the caller's side counts as `stat` does; the callee's side also sees mirrored copies."""

from __future__ import annotations

from meshline.rollouts.controller import signal_of
from meshline.telemetry.intake import TelemetryIntake
from meshline.telemetry.record import LogRecord

NOW = 1_000.0


def record(direction: str, version: str, status: int = 200, ms: float = 2.0, source: str = "web",
           at: float = NOW - 0.5) -> LogRecord:  # fmt: skip
    return LogRecord(time=at, mesh="default", dataplane="x", direction=direction, source=source,
                     destination="orders", destination_version=version, status=status, duration_ms=ms)  # fmt: skip


def test_each_version_is_counted_once_on_the_callers_side_and_denials_are_neither() -> None:
    intake = TelemetryIntake(clock=lambda: NOW)
    intake.ingest([record("outbound", "v1") for _ in range(90)])
    intake.ingest([record("outbound", "v2", status=503) for _ in range(2)] + [record("outbound", "v2", ms=300)] * 8)
    intake.ingest([record("inbound", "v2") for _ in range(10)])  # the callee's halves: not counted again
    denied = record("outbound", "v2", status=403)
    denied.denied = True
    intake.ingest([denied])
    v1 = signal_of(intake.version_summary("default", "orders", "v1", 5))
    v2 = signal_of(intake.version_summary("default", "orders", "v2", 5))
    assert (v1.requests, v1.failures, v1.success_pct) == (90, 0, 100.0)
    assert (v2.requests, v2.failures, v2.success_pct) == (10, 2, 80.0)
    assert v2.p99 is not None and v2.p99 >= 300 and v1.p99 is not None and v1.p99 < 3
    # the service as a whole still counts each request once (stat's numbers are unchanged)
    assert intake.meshes["default"].services["orders"].total == 101


def test_the_callee_side_sees_mirrored_copies_and_old_seconds_fall_out_of_the_window() -> None:
    intake = TelemetryIntake(clock=lambda: NOW)
    intake.ingest([record("inbound", "v2", status=500) for _ in range(3)] + [record("inbound", "v2")] * 7)
    intake.ingest([record("outbound", "v1", at=NOW - 30) for _ in range(5)])
    mirrored = signal_of(intake.version_summary("default", "orders", "v2", 5, side="callee"))
    assert (mirrored.requests, mirrored.failures) == (10, 3)
    assert signal_of(intake.version_summary("default", "orders", "v2", 5)).requests == 0  # no caller saw them
    assert signal_of(intake.version_summary("default", "orders", "v1", 5)).requests == 0  # 30 s ago
    assert signal_of(intake.version_summary("default", "orders", "v1", 60)).requests == 5
    assert signal_of(intake.version_summary("default", "nothing", "v9", 5)).requests == 0
