from __future__ import annotations

from pathlib import Path

import pytest

from meshline.store.sqlite import SQLiteStore
from meshline.testing.store_conformance import KINDS, StoreConformance, StoreFactory


class TestSQLiteStore(StoreConformance):
    @pytest.fixture
    def store_factory(self, tmp_path: Path) -> StoreFactory:
        return lambda: SQLiteStore(KINDS, tmp_path / "meshline.db")
