"""``python -m benchmarks.adssim --xds HOST:PORT [--ca-file PEM]``: simulated dataplanes, driven over stdio.

Commands arrive as JSON lines on stdin; each gets one JSON line on stdout (logs go to
stderr). See :mod:`benchmarks.adssim.control` for the driver side and the commands.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import random
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import grpc

from benchmarks.adssim.envoy_like import SimDataplane


class Simulation:
    def __init__(self, target: str, ca_file: Path | None, per_channel: int) -> None:
        self.target = target
        self.creds = grpc.ssl_channel_credentials(ca_file.read_bytes()) if ca_file else None
        self.per_channel = max(1, per_channel)
        self.channels: list[grpc.aio.Channel] = []
        self.dataplanes: list[SimDataplane] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.synced: set[str] = set()
        self.synced_at: dict[str, float] = {}  # node -> when it last became synced
        self.last_push_at = 0.0
        self.total_pushes: dict[str, int] = {}  # short type -> responses received, never reset
        self.changed = asyncio.Event()

    def _channel(self, index: int) -> grpc.aio.Channel:
        slot = index // self.per_channel
        while len(self.channels) <= slot:
            options = [
                ("grpc.max_receive_message_length", 64 << 20),
                # Envoy retries a broken ADS stream on its own backoff (envoy_like.py); gRPC's
                # channel would add its own (1 s, x1.6, up to 120 s) and make reconnects slower
                # than Envoy's. Keep the channel's short so the stream's backoff is what counts.
                # (Not grpc.min_reconnect_backoff_ms: it is also the connect timeout, 20 s.)
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 250),
            ]
            self.channels.append(
                grpc.aio.secure_channel(self.target, self.creds, options)
                if self.creds
                else grpc.aio.insecure_channel(self.target, options)
            )
        return self.channels[slot]

    def _on_change(self, dp: SimDataplane, pushed: str | None = None) -> None:
        if pushed is not None:
            self.last_push_at = time.monotonic()
            self.total_pushes[pushed] = self.total_pushes.get(pushed, 0) + 1
        if dp.synced():
            if dp.node not in self.synced:
                self.synced.add(dp.node)
                self.synced_at[dp.node] = time.monotonic()
        else:
            self.synced.discard(dp.node)
        self.changed.set()

    # -- commands --------------------------------------------------------------------
    def start(self, nodes: list[dict[str, Any]], spread: float = 0.0) -> dict[str, Any]:
        for entry in nodes:
            index = len(self.dataplanes)
            dp = SimDataplane(entry["node"], partial(self._channel, index), entry.get("token"), print)
            dp.on_change = partial(self._on_change, dp)
            self.dataplanes.append(dp)
            self.tasks.append(asyncio.create_task(dp.run(random.uniform(0, spread))))
        return {"started": len(nodes), "total": len(self.dataplanes)}

    async def wait_synced(self, timeout: float, count: int | None = None) -> dict[str, Any]:
        want = len(self.dataplanes) if count is None else count
        deadline = time.monotonic() + timeout
        while len(self.synced) < want and time.monotonic() < deadline:
            await self._changed(deadline)
        # Thousands of long-lived channels and streams: keep them out of the collector's
        # full passes, whose pauses would be mistaken for the control plane's.
        gc.freeze()
        return {
            **self.status(),
            "at": max(self.synced_at.values(), default=0.0),
            "timed_out": len(self.synced) < want,
        }

    async def _changed(self, deadline: float) -> None:
        self.changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.changed.wait(), max(0.001, min(0.5, deadline - time.monotonic())))

    def mark(self) -> dict[str, Any]:
        for dp in self.dataplanes:
            dp.tally.clear()
        return {"t": time.monotonic()}

    def _pushed(self, dp: SimDataplane, types: list[str] | None) -> bool:
        return any(t in dp.tally.pushes for t in types) if types else bool(dp.tally.pushes)

    async def collect(
        self, since: float, expect: int, quiet: float, timeout: float, types: list[str] | None = None
    ) -> dict[str, Any]:
        """Wait until ``expect`` dataplanes got a push (of ``types``, default any) and then ``quiet`` s
        pass without pushes (with ``types``: until those ``expect`` have ACKed); report."""
        deadline = time.monotonic() + timeout
        checked = time.monotonic()
        quiet_since = since
        while time.monotonic() < deadline:
            now = time.monotonic()
            if now - checked > 0.1:
                # This loop was held up (the simulator was busy): pushes may be waiting unread
                # in its sockets, so silence so far proves nothing.
                quiet_since = now
            checked = now
            pushed = sum(1 for dp in self.dataplanes if self._pushed(dp, types))
            quiet_for = now - max(self.last_push_at, quiet_since)
            if pushed >= expect and (types or quiet_for >= quiet):
                break
            await asyncio.sleep(0.01)
        by_type: dict[str, int] = {}
        latencies, nodes = [], []
        for index, dp in enumerate(self.dataplanes):
            if self._pushed(dp, types):
                latencies.append(dp.tally.last_ack(types) - since)
                nodes.append(index)
            for short, n in dp.tally.pushes.items():
                by_type[short] = by_type.get(short, 0) + n
        return {
            "pushed": len(latencies),
            "latencies": latencies,
            "nodes": nodes,
            "by_type": by_type,
            "timed_out": len(latencies) < expect,
        }

    def versions(self) -> dict[str, Any]:
        return {"versions": {dp.node: dp.versions() for dp in self.dataplanes}}

    def status(self) -> dict[str, Any]:
        errors = sorted({dp.last_error for dp in self.dataplanes if dp.last_error})
        return {
            "dataplanes": len(self.dataplanes),
            "connected": sum(1 for dp in self.dataplanes if dp.connected),
            "synced": len(self.synced),
            "streams": sum(dp.streams for dp in self.dataplanes),
            "channels": len(self.channels),
            "errors": errors[:5],
            "total_pushes": dict(self.total_pushes),
            "last_push_at": self.last_push_at,
            "now": time.monotonic(),
        }

    def synced_times(self, since: float) -> dict[str, Any]:
        """Per dataplane, seconds from ``since`` until it was last seen synced (None: not synced)."""
        return {"times": [self.synced_at[dp.node] - since if dp.node in self.synced else None
                          for dp in self.dataplanes]}  # fmt: skip

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for channel in self.channels:
            await channel.close()


async def serve(sim: Simulation) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            break
        cmd = json.loads(line)
        name = cmd.pop("cmd")
        if name == "quit":
            break
        try:
            result = getattr(sim, name)(**cmd)
            if asyncio.iscoroutine(result):
                result = await result
        except Exception as err:  # report to the driver, keep serving
            result = {"error": f"{type(err).__name__}: {err}"}
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()
    await sim.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.adssim")
    parser.add_argument("--xds", required=True, help="control plane's xDS HOST:PORT")
    parser.add_argument("--ca-file", type=Path, help="CA to verify the xDS server's TLS (plaintext without)")
    parser.add_argument(
        "--streams-per-channel", type=int, default=1, help="ADS streams sharing one connection"
    )
    args = parser.parse_args()
    asyncio.run(serve(Simulation(args.xds, args.ca_file, args.streams_per_channel)))


if __name__ == "__main__":
    main()
