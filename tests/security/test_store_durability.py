"""Finding 11: SQLite ran ``synchronous=NORMAL``, so an acknowledged write could be lost to a
power cut. The store of record now commits with ``FULL`` (cost measured small:
benchmarks/RESULTS.md, "SQLite durability"); this checks the connection that writes really
runs it, in a real control plane's store file, and that the WAL journal is kept."""

from __future__ import annotations

from pathlib import Path

from meshline.core import mesh
from meshline.core.resource import KindRegistry
from meshline.store.sqlite import SQLiteStore

FULL = 2  # PRAGMA synchronous: 0 OFF, 1 NORMAL, 2 FULL, 3 EXTRA


async def test_the_store_of_record_commits_with_synchronous_full(tmp_path: Path) -> None:
    store = SQLiteStore(KindRegistry([mesh.KIND]), tmp_path / "meshline.db")
    await store.start()
    try:
        assert store.wdb.execute("PRAGMA synchronous").fetchone()[0] == FULL
        assert store.db.execute("PRAGMA synchronous").fetchone()[0] == FULL
        assert store.wdb.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        await store.close()
