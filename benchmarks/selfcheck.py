"""Check the load generator itself: accuracy on a direct nginx, and a stall seen in the tail.

``python -m benchmarks --selfcheck`` runs:

1. openloop at 1,000 req/s against nginx on loopback: p50 should be ~0.05-0.1 ms, and the
   generator's own send lag (how late it sent a request whose connection was free) tiny.
2. openloop at 1,000 req/s against ``stall_server``, which freezes once for 200 ms: max must
   be >= 200 ms and ~100 requests must be >= 100 ms late (everything due during the stall).
   The "service time" column is what a closed-loop tool measures (from the actual send): it
   sees only the 16 requests that were in flight.
3. If wrk is installed, wrk against a fresh stall server for comparison. wrk 4 is closed
   loop but rewrites its histogram afterwards (``stats_correct``: adds the samples it
   should have taken, assuming its own *mean* per-connection interval), so its tail shows
   the stall too -- as an estimate that depends on the throughput it reached.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchmarks import tools
from benchmarks.loadgen import openloop, wrk
from benchmarks.procs import ProcessGroup, free_port, wait_http_ok
from benchmarks.report import fmt_ms
from benchmarks.scenarios.upstream import start_nginx

STALL_MS = 200.0
RATE = 1000.0


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def _start_stall_server(procs: ProcessGroup, name: str) -> str:
    port = free_port()
    root = str(Path(__file__).resolve().parent.parent)
    pythonpath = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    procs.spawn(
        name,
        [sys.executable, "-m", "benchmarks.loadgen.stall_server", "--port", str(port),
         "--stall-after", "1.0", "--stall-ms", f"{STALL_MS:g}"],
        env={**os.environ, "PYTHONPATH": pythonpath},
    )  # fmt: skip
    wait_http_ok("127.0.0.1", port, "/", timeout=15, group=procs)
    return f"http://127.0.0.1:{port}/"


def run(seconds: float = 5.0, console: Console | None = None) -> list[Check]:
    console = console or Console()
    exe = openloop.build()
    table = Table(title="Load generator self-check (ms)", title_justify="left")
    for heading in ("target", "view", "p50", "p90", "p99", "p99.9", "max", ">=10 ms", ">=100 ms"):
        table.add_column(heading, justify="left" if heading in ("target", "view") else "right")
    checks: list[Check] = []
    with (
        tempfile.TemporaryDirectory(prefix="meshline-selfcheck-") as tmp,
        ProcessGroup(Path(tmp) / "logs") as procs,
    ):
        upstream, _pid = start_nginx(Path(tmp) / "nginx", procs)
        direct = openloop.run(
            upstream.url, openloop.OpenLoopSettings(rate=RATE, seconds=seconds + 1, warmup=1), exe=exe
        )
        _row(table, "nginx direct", "latency (open loop)", direct.latency, direct.raw["over_ms"])
        _row(table, "", "generator send lag", direct.send_lag, None)
        checks.append(
            Check(
                "direct p50 < 0.2 ms", direct.latency["p50"] < 0.2, f"p50 {fmt_ms(direct.latency['p50'])} ms"
            )
        )

        stall_seconds = max(3.0, min(seconds, 5.0))
        stall_url = _start_stall_server(procs, "stall-server")
        stalled = openloop.run(
            stall_url, openloop.OpenLoopSettings(rate=RATE, seconds=stall_seconds, warmup=0.3), exe=exe
        )
        over = stalled.raw["over_ms"]
        _row(table, f"stall {STALL_MS:g} ms once", "latency (open loop)", stalled.latency, over)
        svc_over = {"10": "", "100": ""}
        _row(table, "", "service time (closed-loop view)", stalled.service, svc_over)
        checks.append(
            Check(
                f"stall: max >= {STALL_MS:g} ms",
                stalled.latency["max"] >= STALL_MS,
                f"max {fmt_ms(stalled.latency['max'])} ms",
            )
        )
        expected = RATE * STALL_MS / 1000 / 2  # requests due in the first half of the stall
        checks.append(
            Check(
                f"stall: >= {expected / 2:.0f} requests >= 100 ms late",
                over["100"] >= expected / 2,
                f"{over['100']} requests >= 100 ms, {over['10']} >= 10 ms",
            )
        )
        if tools.find("wrk"):
            wrk_url = _start_stall_server(procs, "stall-server-wrk")
            closed = wrk.run(wrk_url, seconds=stall_seconds, connections=16)
            table.add_row(
                f"stall {STALL_MS:g} ms once",
                f"wrk: closed loop + its after-the-fact correction, {closed.rps:,.0f} req/s",
                *(fmt_ms(closed.latency_ms.get(k)) for k in ("p50", "p90", "p99")),
                "", "", "", "",
            )  # fmt: skip
    console.print(table)
    for check in checks:
        console.print(
            f"[{'green' if check.ok else 'red'}]{'PASS' if check.ok else 'FAIL'}[/] {check.name}: {check.detail}"
        )
    return checks


def _row(
    table: Table, target: str, view: str, dist: dict[str, float], over: Mapping[str, object] | None
) -> None:
    over = over or {}
    table.add_row(
        target,
        view,
        *(fmt_ms(dist[k]) for k in ("p50", "p90", "p99", "p99.9", "max")),
        str(over.get("10", "")),
        str(over.get("100", "")),
    )
