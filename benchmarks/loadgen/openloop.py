"""Build and drive ``openloop.c``, the fixed-rate load generator.

The C source is compiled with the machine's gcc the first time it is needed (and again
whenever it changes), into a per-user cache directory keyed by the source's hash.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import tools

SOURCE = Path(__file__).with_name("openloop.c")


class LoadgenError(RuntimeError):
    """The load generator failed to build or to run."""


def build(cache_dir: Path | None = None) -> Path:
    """Compile openloop.c (cached by content hash) and return the executable's path."""
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source).hexdigest()[:16]
    cache = cache_dir or Path(tempfile.gettempdir()) / f"meshline-bench-{os.getuid()}"
    exe = cache / f"openloop-{digest}"
    if exe.is_file():
        return exe
    gcc = tools.find("gcc") or tools.find("cc")
    if gcc is None:
        raise LoadgenError("gcc not found: the open-loop generator is compiled at benchmark time")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f".openloop-{digest}.{os.getpid()}"
    proc = subprocess.run(
        [gcc, "-O2", "-Wall", "-Wextra", "-std=gnu11", "-o", str(tmp), str(SOURCE)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise LoadgenError(f"compiling {SOURCE.name} failed:\n{proc.stderr}")
    os.replace(tmp, exe)  # atomic: concurrent builds of the same source are harmless
    return exe


@dataclass(frozen=True)
class OpenLoopSettings:
    rate: float  # requests per second, fixed
    seconds: float  # total schedule length, warm-up included
    warmup: float  # leading seconds whose requests are not recorded
    connections: int = 16
    spin_us: float = 50.0  # poll instead of sleeping when the next request is this close
    timeout_ms: float = 10_000.0
    drain_seconds: float = 5.0


@dataclass
class OpenLoopResult:
    """What openloop.c printed: counts, distributions in ms (latency from intended send time)."""

    raw: dict[str, Any]
    window_hooks_ran: bool = False  # both window markers seen (not interrupted)

    @property
    def latency(self) -> dict[str, float]:
        value: dict[str, float] = self.raw["latency_ms"]
        return value

    @property
    def service(self) -> dict[str, float]:
        value: dict[str, float] = self.raw["service_ms"]
        return value

    @property
    def send_lag(self) -> dict[str, float]:
        value: dict[str, float] = self.raw["send_lag_ms"]
        return value

    @property
    def achieved_rate(self) -> float:
        return float(self.raw["achieved_rate"])

    @property
    def errors(self) -> int:
        return int(self.raw["errors"])

    @property
    def ok(self) -> int:
        return int(self.raw["ok"])


def run(
    url: str,
    settings: OpenLoopSettings,
    *,
    on_window_start: Callable[[], None] | None = None,
    on_window_end: Callable[[], None] | None = None,
    exe: Path | None = None,
) -> OpenLoopResult:
    """Run one fixed-rate load; the hooks fire when the measured window opens and closes.

    The window opens when the first post-warm-up request is due and closes when the last
    request of the schedule is due; the hooks are where the caller samples /proc.
    """
    binary = exe or build()
    argv = [
        str(binary),
        "-r", f"{settings.rate:g}",
        "-d", f"{settings.seconds:g}",
        "-w", f"{settings.warmup:g}",
        "-c", str(settings.connections),
        "-s", f"{settings.spin_us:g}",
        "-t", f"{settings.timeout_ms:g}",
        "-D", f"{settings.drain_seconds:g}",
        url,
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    hooks = 0
    result_line = ""
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.strip()
            if line == "window-start":
                if on_window_start:
                    on_window_start()
                hooks += 1
            elif line == "window-end":
                if on_window_end:
                    on_window_end()
                hooks += 1
            elif line.startswith("{"):
                result_line = line
        stderr = proc.stderr.read() if proc.stderr else ""
        code = proc.wait()
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
    if code != 0 or not result_line:
        raise LoadgenError(f"openloop exited {code}: {stderr.strip()}")
    return OpenLoopResult(raw=json.loads(result_line), window_hooks_ran=hooks == 2)
