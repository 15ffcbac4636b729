from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from meshline.store.sqlite import SQLiteStore
from meshline.testing.store_conformance import KINDS, StoreConformance, StoreFactory, a_dataplane, a_mesh


class TestSQLiteStore(StoreConformance):
    @pytest.fixture
    def store_factory(self, tmp_path: Path) -> StoreFactory:
        return lambda: SQLiteStore(KINDS, tmp_path / "meshline.db")


async def test_close_waits_for_a_status_batch_whose_caller_was_cancelled(tmp_path: Path) -> None:
    """A control plane stopping mid-batch cancels the status writer; its thread still writes on
    the status connection, which close() must not close under it (that crashed the process)."""
    store = SQLiteStore(KINDS, tmp_path / "meshline.db")
    await store.start()
    await store.create(a_mesh("default"))
    dataplanes = [await store.create(a_dataplane("default", f"dp-{i}", 8000 + i)) for i in range(200)]
    batch = {dp.key: {f"part{j}": {"n": j, "pad": "x" * 200} for j in range(50)} for dp in dataplanes}  # 10,000 rows
    writer = asyncio.ensure_future(store.put_status(batch))
    await asyncio.sleep(0.005)  # the batch is in its thread
    writer.cancel()
    await store.close()  # waits for the thread, then closes: no crash, nothing half-open
    again = SQLiteStore(KINDS, tmp_path / "meshline.db")
    await again.start()
    try:
        rows = await again.list_status("Dataplane", "default")
        # the batch its thread had begun was finished before the connection closed
        assert len(rows) == 200 and all(len(parts) == 50 for parts in rows.values())
    finally:
        await again.close()
