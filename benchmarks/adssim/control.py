"""The driver's handle on a running simulator process (``python -m benchmarks.adssim``).

Commands (one JSON line each way):

``start(nodes, spread)``     open an ADS stream per ``{"node", "token"}``, each after a random
                             delay below ``spread`` s
``wait_synced(timeout)``     until every dataplane has ACKed all four types on its stream
``mark()``                   forget what was pushed so far; returns the simulator's clock
``collect(since, expect, quiet, timeout, types)``
                             wait until ``expect`` dataplanes got a push and then ``quiet`` s
                             pass without any push; per pushed dataplane, the seconds from
                             ``since`` to its last ACK, which ones, and pushes per type.
                             With ``types`` (e.g. ``["RDS"]``) only those count, and it
                             returns once ``expect`` dataplanes have ACKed them (other
                             traffic, such as endpoint churn, may go on meanwhile)
``versions()``, ``status()``, ``synced_times(since)``

Times are ``time.monotonic()`` (CLOCK_MONOTONIC), the same clock in every process on a host,
so the driver's "before the API write" and the simulator's "ACK sent" compare directly.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import IO, Any

from benchmarks.procs import ProcessError, ProcessGroup

ROOT = Path(__file__).resolve().parents[2]


class Simulator:
    def __init__(
        self, procs: ProcessGroup, xds: str, ca_file: Path | None, *, streams_per_channel: int = 1,
        name: str = "adssim",
    ) -> None:  # fmt: skip
        argv = [sys.executable, "-m", "benchmarks.adssim", "--xds", xds,
                "--streams-per-channel", str(streams_per_channel)]  # fmt: skip
        if ca_file is not None:
            argv += ["--ca-file", str(ca_file)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        self.procs = procs
        self.name = name
        self.proc = procs.spawn(name, argv, env=env, pipes=True)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._in: IO[bytes] = self.proc.stdin
        self._out: IO[bytes] = self.proc.stdout

    @property
    def pid(self) -> int:
        return self.proc.pid

    def call(self, cmd: str, **args: Any) -> dict[str, Any]:
        self._in.write((json.dumps({"cmd": cmd, **args}) + "\n").encode())
        self._in.flush()
        line = self._out.readline()
        if not line:
            raise ProcessError(f"simulator exited:\n{self.procs.log_tail(self.name)}")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise ProcessError(f"simulator {cmd}: {reply['error']}")
        return reply

    def start(self, nodes: list[dict[str, str | None]], spread: float = 0.0) -> dict[str, Any]:
        return self.call("start", nodes=nodes, spread=spread)

    def wait_synced(self, timeout: float, count: int | None = None) -> dict[str, Any]:
        return self.call("wait_synced", timeout=timeout, count=count)

    def mark(self) -> float:
        return float(self.call("mark")["t"])

    def collect(
        self, since: float, expect: int, quiet: float = 1.0, timeout: float = 60, types: list[str] | None = None
    ) -> dict[str, Any]:
        return self.call("collect", since=since, expect=expect, quiet=quiet, timeout=timeout, types=types)

    def versions(self) -> dict[str, dict[str, str]]:
        return dict(self.call("versions")["versions"])

    def status(self) -> dict[str, Any]:
        return self.call("status")

    def synced_times(self, since: float) -> list[float | None]:
        return list(self.call("synced_times", since=since)["times"])

    def quit(self) -> None:
        if self.proc.poll() is None:
            self._in.write(b'{"cmd": "quit"}\n')
            self._in.flush()
