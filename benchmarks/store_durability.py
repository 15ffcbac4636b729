"""``python -m benchmarks.store_durability [--rounds N] [--dir PATH]``: what SQLite's
``synchronous=FULL`` costs the store of record against ``NORMAL``.

With WAL, NORMAL syncs only at checkpoints: a commit that returned can be lost to a power cut
(not to a crash of the process). FULL syncs the WAL at every commit. The cost is one fsync
per write, so it depends on the disk: run it where the control plane's data dir lives
(``--dir``). Per setting, interleaved over rounds:

* single writes: 300 ``put`` of a small resource each (what API PUTs and agent registrations
  are), latency p50/p99 and writes/s;
* one apply: ``put_all`` of 1,000 resources in one transaction (one commit, one fsync).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from meshline.core import mesh
from meshline.core.resource import KindRegistry, Resource
from meshline.store import sqlite

KINDS = KindRegistry([mesh.KIND])
SINGLE_WRITES = 300
APPLY_SIZE = 1000


def _mesh(name: str, domain: str) -> Resource:
    return KINDS.decode({"kind": "Mesh", "name": name, "spec": {"trustDomain": domain}})


async def _run(setting: str, where: Path, round_no: int) -> dict[str, float]:
    sqlite.SYNCHRONOUS = setting
    store = sqlite.SQLiteStore(KINDS, where / f"bench-{setting}-{round_no}.db")
    await store.start()
    try:
        latencies = []
        start = time.perf_counter()
        for i in range(SINGLE_WRITES):
            t = time.perf_counter()
            await store.put(_mesh(f"m{i % 50}", f"d{i}.example"))
            latencies.append(time.perf_counter() - t)
        elapsed = time.perf_counter() - start
        t = time.perf_counter()
        await store.put_all([(_mesh(f"a{i}", "a.example"), 0) for i in range(APPLY_SIZE)])
        apply_s = time.perf_counter() - t
    finally:
        await store.close()
    latencies.sort()
    return {
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "writes_per_s": SINGLE_WRITES / elapsed,
        "apply_ms": apply_s * 1000,
    }


async def main(rounds: int, where: Path) -> None:
    results: dict[str, list[dict[str, float]]] = {"NORMAL": [], "FULL": []}
    for r in range(rounds):
        for setting in ("NORMAL", "FULL") if r % 2 == 0 else ("FULL", "NORMAL"):
            results[setting].append(await _run(setting, where, r))
    print(f"SQLite synchronous, {rounds} interleaved rounds, median of rounds; dir {where}")
    print("| setting | single write p50 ms | p99 ms | writes/s | apply of 1,000 ms |")
    print("|---|---:|---:|---:|---:|")
    for setting, runs in results.items():
        med = {k: statistics.median(run[k] for run in runs) for k in runs[0]}
        print(f"| {setting} | {med['p50_ms']:.3f} | {med['p99_ms']:.3f} | {med['writes_per_s']:,.0f} | {med['apply_ms']:.1f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None, help="where the databases go (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        asyncio.run(main(args.rounds, Path(tmp)))
