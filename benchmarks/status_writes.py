"""``python -m benchmarks.status_writes [N ...]``: what writing dataplane status costs.

For N dataplanes (default 1,000 and 5,000) in a SQLite store, writes one status batch of N
xDS records (what the StatusPublisher writes after a push every sidecar ACKs), three times,
and prints the batch's wall time and the longest the event loop went without a turn meanwhile
(a 1 ms ticker): the figure that says whether status writes can delay pushes and ACKs.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

from meshline.core.resource import ResourceKey
from meshline.kinds import default_kinds
from meshline.store.sqlite import SQLiteStore
from meshline.testing.store_conformance import a_dataplane
from meshline.xds.status import DataplaneStatus, TypeStatus


async def measure(n: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(default_kinds(), Path(tmp) / "meshline.db")
        await store.start()
        try:
            for i in range(n):
                await store.create(a_dataplane("default", f"dp-{i}"))
            types = {t: TypeStatus(sent="0123abcd", acked="0123abcd", pushes=3) for t in ("CDS", "EDS", "LDS", "RDS")}
            record = DataplaneStatus("x", connected=True, types=types).to_record()
            parts = {ResourceKey("Dataplane", "default", f"dp-{i}"): {"xds": {**record, "replica": "r"}}
                     for i in range(n)}  # fmt: skip
            stall, done = 0.0, False

            async def tick() -> None:
                nonlocal stall
                while not done:
                    t = time.perf_counter()
                    await asyncio.sleep(0.001)
                    stall = max(stall, time.perf_counter() - t - 0.001)

            ticker = asyncio.create_task(tick())
            walls = []
            for _ in range(3):
                t = time.perf_counter()
                await store.put_status(parts)
                walls.append(time.perf_counter() - t)
            done = True
            await ticker
            return sorted(walls)[1], stall
        finally:
            await store.close()


def main(sizes: list[int]) -> None:
    for n in sizes:
        wall, stall = asyncio.run(measure(n))
        print(f"{n:6d} records: batch {wall * 1000:6.1f} ms (median of 3), longest loop stall {stall * 1000:5.1f} ms")


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [1000, 5000])
