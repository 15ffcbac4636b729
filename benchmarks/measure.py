"""Per-process CPU and private memory, read from /proc.

CPU: ``utime + stime`` (fields 14 and 15 of ``/proc/PID/stat``, all threads) sampled at the
start and end of a measurement window. ``cpu_seconds * 1000 / requests`` is the same number
as "vCPU per 1,000 req/s" (CPU-seconds per second, divided by thousands of requests per
second), so it does not depend on the window's exact wall-clock length.

Memory: ``Pss_Anon`` and ``Private_Dirty`` from ``/proc/PID/smaps_rollup``. RSS counts the
proxy binary's mapped pages, which every sidecar on a host shares (Envoy: ~63 MB RSS, ~14 MB
of it private); the private anonymous memory is what one more sidecar costs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # comm (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of the full line
    return (utime + stime) / _CLK_TCK


@dataclass(frozen=True)
class MemoryUsage:
    """Kilobytes from smaps_rollup."""

    pss_anon_kb: int
    private_dirty_kb: int
    rss_kb: int

    @property
    def pss_anon_mb(self) -> float:
        return self.pss_anon_kb / 1024

    @property
    def private_dirty_mb(self) -> float:
        return self.private_dirty_kb / 1024

    @property
    def rss_mb(self) -> float:
        return self.rss_kb / 1024

    def as_dict(self) -> dict[str, float]:
        return {
            "pss_anon_mb": round(self.pss_anon_mb, 2),
            "private_dirty_mb": round(self.private_dirty_mb, 2),
            "rss_mb": round(self.rss_mb, 2),
        }


def memory(pid: int) -> MemoryUsage:
    """Private memory of ``pid`` (whole process) from ``/proc/PID/smaps_rollup``."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if len(parts) == 2 and parts[1] == "kB":
            values[key] = int(parts[0])
    return MemoryUsage(
        pss_anon_kb=values.get("Pss_Anon", 0),
        private_dirty_kb=values.get("Private_Dirty", 0),
        rss_kb=values.get("Rss", 0),
    )


class CpuWindow:
    """CPU seconds used by each of a set of processes between :meth:`start` and :meth:`stop`."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)
        self._start: dict[str, float] = {}
        self.used: dict[str, float] = {}

    def start(self) -> None:
        self._start = {role: cpu_seconds(pid) for role, pid in self.pids.items()}

    def stop(self) -> dict[str, float]:
        self.used = {role: cpu_seconds(pid) - self._start[role] for role, pid in self.pids.items()}
        return self.used


def vcpu_per_krps(cpu_used: float, requests: float) -> float:
    """vCPU per 1,000 req/s == CPU-seconds per 1,000 requests."""
    return cpu_used * 1000.0 / requests if requests > 0 else 0.0


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine from the first line of /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already inside user/nice
    return total - idle, total


def machine_busy(interval: float = 0.5) -> float:
    """Fraction (0-1) of all CPUs busy during ``interval`` seconds, whoever used them."""
    busy0, total0 = _cpu_times()
    time.sleep(interval)
    busy1, total1 = _cpu_times()
    return (busy1 - busy0) / (total1 - total0) if total1 > total0 else 0.0
