"""Pick a store backend from a URL: ``sqlite:///path/to/file.db`` or ``postgresql://...``."""

from __future__ import annotations

from pathlib import Path

from meshline.core.errors import MeshlineError
from meshline.core.resource import KindRegistry
from meshline.store.base import Store


def open_store(url: str, kinds: KindRegistry, data_dir: Path | None = None) -> Store:
    if url in ("", "sqlite", "sqlite://"):
        base = data_dir or Path.cwd()
        from meshline.store.sqlite import SQLiteStore

        return SQLiteStore(kinds, base / "meshline.db")
    if url.startswith("sqlite:///"):
        from meshline.store.sqlite import SQLiteStore

        return SQLiteStore(kinds, url[len("sqlite:///") :] or ":memory:")
    if url == "sqlite::memory:" or url == "memory":
        from meshline.store.sqlite import SQLiteStore

        return SQLiteStore(kinds, ":memory:")
    if url.startswith(("postgres://", "postgresql://")):
        from meshline.store.postgres import PostgresStore

        return PostgresStore(kinds, url)
    raise MeshlineError(
        f"store URL '{url}' is not supported; use sqlite:///path/meshline.db or postgresql://user@host/db"
    )
