"""Saturation throughput with ``wrk`` (closed loop: as fast as the target answers).

wrk's latency figures are closed-loop (they omit the requests a stalled server delayed), so
the harness reports only wrk's throughput as "saturation" and takes latencies from the
open-loop generator. Debian's wrk segfaults at start about 3 runs in 100: retried.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

from benchmarks import tools
from benchmarks.procs import die_with_parent

_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


class WrkError(RuntimeError):
    """wrk failed (other than the known start-up crash) or printed nothing parseable."""


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    rps: float
    latency_ms: dict[str, float]  # closed-loop: for reference only
    socket_errors: int
    non_2xx: int
    attempts: int


def _ms(value: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", value)
    if not match:
        raise WrkError(f"cannot parse wrk duration {value!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse(output: str, attempts: int = 1) -> WrkResult:
    """Parse ``wrk --latency`` output."""
    summary = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", output)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if not summary or not rps:
        raise WrkError(f"unexpected wrk output:\n{output}")
    latency = {f"p{pct}": _ms(val) for pct, val in re.findall(r"^\s+(50|90|99)%\s+(\S+)$", output, re.M)}
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return WrkResult(
        requests=int(summary.group(1)),
        seconds=_ms(summary.group(2) + summary.group(3)) / 1e3,
        rps=float(rps.group(1)),
        latency_ms=latency,
        socket_errors=sum(int(x) for x in errors.groups()) if errors else 0,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        attempts=attempts,
    )


def run(
    url: str,
    *,
    seconds: float,
    connections: int = 16,
    threads: int = 1,
    retries: int = 5,
    before: Callable[[], None] | None = None,
) -> WrkResult:
    """Run wrk; ``before`` runs just before each attempt (the caller starts its CPU window)."""
    binary = tools.require("wrk")
    argv = [binary, f"-t{threads}", f"-c{connections}", f"-d{_whole(seconds)}s", "--latency", url]
    last = ""
    for attempt in range(1, retries + 1):
        if before:
            before()
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=seconds + 60, preexec_fn=die_with_parent
        )
        if proc.returncode == 0:
            return parse(proc.stdout, attempt)
        last = f"exit {proc.returncode}: {proc.stderr.strip()}"
        if proc.returncode not in (-11, 139):  # anything but the known SIGSEGV is an error
            break
    raise WrkError(f"wrk failed: {last}")


def run_in_netns(host_ns: str, url: str, seconds: float, connections: int) -> WrkResult:
    """One wrk run (one thread, keep-alive connections) from inside a test host's namespace."""
    binary = tools.require("wrk")
    argv = ["ip", "netns", "exec", host_ns, binary, "-t1", f"-c{connections}", f"-d{_whole(seconds)}s", "--latency", url]
    failures: list[str] = []
    for attempt in range(1, 6):  # Debian's wrk sometimes segfaults at start
        done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
        if done.returncode == 0 and "Requests/sec" in done.stdout:
            return parse(done.stdout, attempt)
        failures.append(f"exit {done.returncode}: {(done.stderr.strip() or done.stdout.strip())[-300:] or 'no output'}")
        if done.returncode not in (-11, 139, 1):
            break
    raise WrkError(f"wrk failed in {host_ns} ({len(failures)} attempts): " + "; ".join(dict.fromkeys(failures)))


def _whole(seconds: float) -> int:
    """wrk takes whole seconds only (``-d1.5s`` prints its usage and exits 1)."""
    return max(1, round(seconds))
