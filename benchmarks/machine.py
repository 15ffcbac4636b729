"""The machine a run happened on: every result is stored with it."""

from __future__ import annotations

import os
import platform
from pathlib import Path

from benchmarks import tools


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def describe() -> dict[str, object]:
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "envoy": tools.version("envoy"),
        "nginx": tools.version("nginx"),
        "haproxy": tools.version("haproxy"),
        "wrk": tools.version("wrk"),
        "gcc": tools.version("gcc"),
        "loadavg_at_start": list(os.getloadavg()),
    }
