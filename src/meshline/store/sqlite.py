"""SQLite backend: the embedded default, one file in the data directory.

One process owns the file (several control-plane replicas need PostgreSQL).
Calls are short and local, so they run on the event loop's thread. Writes go through their
own connection, one transaction at a time under a lock; reads use another connection, so a
long transaction (one apply of thousands of resources, which gives the loop back between
writes) is invisible to readers until it commits, and vanishes if it does not.

``synchronous=FULL``: a commit is on disk when it returns, so an acknowledged write survives
a power loss too (measured cost: benchmarks/RESULTS.md, "SQLite durability").
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from meshline.core.datadir import create_private, secure_file
from meshline.core.errors import ClientGone, Conflict, NotFound
from meshline.core.resource import KindRegistry, Resource, ResourceKey
from meshline.core.slices import Slices
from meshline.store.base import REPLICA_FORGOTTEN_AFTER, Abandoned, Change, Status, Store, Write

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS resources (
    kind TEXT NOT NULL, mesh TEXT NOT NULL, name TEXT NOT NULL,
    version INTEGER NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL,
    spec TEXT NOT NULL, labels TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (kind, mesh, name)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('revision', 0);
CREATE TABLE IF NOT EXISTS status_parts (
    kind TEXT NOT NULL, mesh TEXT NOT NULL, name TEXT NOT NULL, part TEXT NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (kind, mesh, name, part)
);
CREATE TABLE IF NOT EXISTS replicas (id TEXT PRIMARY KEY, beat_at REAL NOT NULL);
"""
SYNCHRONOUS = "FULL"  # see the module docstring


STATUS_CHUNK = 250  # status rows per transaction (a few milliseconds of the write lock)


class SQLiteStore(Store):
    lists_in_code_point_order = True

    def __init__(self, kinds: KindRegistry, path: str | Path) -> None:
        super().__init__(kinds)
        self.path = str(path)
        self._db: sqlite3.Connection | None = None
        self._wdb: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()
        self._status_db: sqlite3.Connection | None = None  # status batches, written off the loop
        self._status_lock = asyncio.Lock()
        self._status_write: asyncio.Future[None] | None = None

    async def start(self) -> None:
        if self.path != ":memory:":
            path = Path(self.path)
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            create_private(path)  # SQLite gives -wal and -shm the database file's mode
            for f in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}-journal")):
                secure_file(f)
        db = self._open()
        db.executescript(SCHEMA)
        columns = {row[1] for row in db.execute("PRAGMA table_info(resources)")}
        if "labels" not in columns:  # a store written before resources had labels
            db.execute("ALTER TABLE resources ADD COLUMN labels TEXT NOT NULL DEFAULT '{}'")
        self._db = db
        # a second connection for writes, so readers never see an uncommitted transaction, and a
        # third for status batches written off the loop (":memory:" is one database per
        # connection: there all are the same)
        self._wdb = self._db if self.path == ":memory:" else self._open()
        if self.path != ":memory:":
            self._status_db = self._open()

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={SYNCHRONOUS}")
        db.execute("PRAGMA busy_timeout=5000")
        return db

    async def close(self) -> None:
        await self._stop_delivery()
        async with self._status_lock:  # a batch in its thread finishes first
            await self._status_write_done()  # even one whose caller was cancelled
            if self._status_db is not None:
                self._status_db.close()
                self._status_db = None
        for db in {id(d): d for d in (self._wdb, self._db) if d is not None}.values():
            db.close()
        self._db = self._wdb = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("store not started")
        return self._db

    def _row(self, row: tuple[str, str, str, int, float, float, str, str]) -> Resource:
        kind, mesh, name, version, created, updated, spec, labels = row
        return self.kinds.load(
            {
                "kind": kind,
                "mesh": mesh,
                "name": name,
                "version": version,
                "createdAt": created,
                "updatedAt": updated,
                "spec": json.loads(spec),
                "labels": json.loads(labels),
            }
        )

    async def get(self, key: ResourceKey) -> Resource:
        row = self.db.execute(
            "SELECT kind, mesh, name, version, created_at, updated_at, spec, labels FROM resources"
            " WHERE kind=? AND mesh=? AND name=?",
            (key.kind, key.mesh, key.name),
        ).fetchone()
        if row is None:
            raise NotFound(f"{key} not found; `meshline get {key.kind.lower()}s` lists what exists")
        return self._row(row)

    async def list(self, kind: str | None = None, mesh: str | None = None) -> list[Resource]:
        sql = "SELECT kind, mesh, name, version, created_at, updated_at, spec, labels FROM resources WHERE 1=1"
        args: list[str] = []
        if kind is not None:
            sql += " AND kind=?"
            args.append(kind)
        if mesh is not None:
            sql += " AND mesh=?"
            args.append(mesh)
        sql += " ORDER BY kind, mesh, name"
        return [self._row(r) for r in self.db.execute(sql, args).fetchall()]

    async def revision(self) -> int:
        return int(self.db.execute("SELECT value FROM meta WHERE key='revision'").fetchone()[0])

    @property
    def wdb(self) -> sqlite3.Connection:
        if self._wdb is None:
            raise RuntimeError("store not started")
        return self._wdb

    def _next_revision(self) -> int:
        self.wdb.execute("UPDATE meta SET value = value + 1 WHERE key='revision'")
        return int(self.wdb.execute("SELECT value FROM meta WHERE key='revision'").fetchone()[0])

    def _stored_version(self, key: ResourceKey) -> tuple[int, float] | None:
        row = self.wdb.execute(
            "SELECT version, created_at FROM resources WHERE kind=? AND mesh=? AND name=?",
            (key.kind, key.mesh, key.name),
        ).fetchone()
        return (int(row[0]), float(row[1])) if row else None

    @contextlib.asynccontextmanager
    async def _write_txn(self) -> AsyncIterator[None]:
        """One writer at a time, in an immediate transaction rolled back on any error."""
        async with self._lock:
            self.wdb.execute("BEGIN IMMEDIATE")
            try:
                yield
                self.wdb.execute("COMMIT")
            except BaseException:
                self.wdb.execute("ROLLBACK")
                raise

    def _create(self, resource: Resource) -> Change:
        if self._stored_version(resource.key) is not None:
            raise Conflict(f"{resource.key} already exists; use `meshline apply` to update it")
        rev = self._next_revision()
        now = time.time()
        stored = replace(self.stamped(resource), version=rev, created_at=now, updated_at=now)
        self.wdb.execute(
            "INSERT INTO resources VALUES (?,?,?,?,?,?,?,?)",
            (stored.kind, stored.mesh, stored.name, rev, now, now, json.dumps(stored.spec.to_json()),
             json.dumps(dict(stored.labels))),
        )
        return Change("put", stored.key, rev, stored)

    def _update(self, resource: Resource, expected_version: int | None) -> Change:
        current = self._stored_version(resource.key)
        if current is None:
            raise NotFound(f"{resource.key} not found")
        if expected_version is not None and expected_version != current[0]:
            raise Conflict(
                f"{resource.key} changed since you read it (version {expected_version}, now"
                f" {current[0]}); read it again and retry"
            )
        rev = self._next_revision()
        now = time.time()
        stored = replace(self.stamped(resource), version=rev, created_at=current[1], updated_at=now)
        self.wdb.execute(
            "UPDATE resources SET version=?, updated_at=?, spec=?, labels=? WHERE kind=? AND mesh=? AND name=?",
            (rev, now, json.dumps(stored.spec.to_json()), json.dumps(dict(stored.labels)),
             stored.kind, stored.mesh, stored.name),
        )
        return Change("put", stored.key, rev, stored)

    def _put(self, resource: Resource, expected_version: int | None) -> Change:
        if expected_version == 0:
            return self._create(resource)
        if expected_version is None and self._stored_version(resource.key) is None:
            return self._create(resource)
        return self._update(resource, expected_version)

    async def create(self, resource: Resource) -> Resource:
        async with self._write_txn():
            change = self._create(resource)
        await self._emit(change)
        assert change.resource is not None
        return change.resource

    async def update(self, resource: Resource, expected_version: int | None = None) -> Resource:
        async with self._write_txn():
            change = self._update(resource, expected_version)
        await self._emit(change)
        assert change.resource is not None
        return change.resource

    async def put_all(self, writes: Sequence[Write], abandoned: Abandoned | None = None) -> builtins.list[Resource]:
        changes: builtins.list[Change] = []
        slices = Slices()
        async with self._write_txn():
            for resource, expected in writes:
                changes.append(self._put(resource, expected))
                if slices.due() and self._wdb is not self._db:  # readers cannot see this transaction
                    await slices.pause()
                if abandoned is not None and abandoned():
                    raise ClientGone(f"the client went away after {len(changes)} of {len(writes)} writes; none kept")
        for change in changes:
            self._pending.append(change)
        await self._deliver()
        return [c.resource for c in changes if c.resource is not None]

    async def delete(self, key: ResourceKey, expected_version: int | None = None) -> None:
        async with self._write_txn():
            current = self._stored_version(key)
            if current is None:
                raise NotFound(f"{key} not found")
            if expected_version is not None and expected_version != current[0]:
                raise Conflict(f"{key} changed since you read it; read it again and retry")
            rev = self._next_revision()
            for table in ("resources", "status_parts"):
                self.wdb.execute(
                    f"DELETE FROM {table} WHERE kind=? AND mesh=? AND name=?", (key.kind, key.mesh, key.name)
                )
        await self._emit(Change("delete", key, rev, None))

    # -- status ----------------------------------------------------------------------
    async def put_status(self, parts: Mapping[ResourceKey, Status]) -> None:
        if not parts:
            return
        if self._status_db is None:  # an in-memory database has no second connection
            async with self._write_txn():
                self._write_status(self.wdb, parts)
            return
        async with self._status_lock:
            await self._status_write_done()
            # Shielded: a caller cancelled mid-batch must not release the lock (and let close()
            # close the connection) while the thread still writes on it.
            self._status_write = asyncio.ensure_future(asyncio.to_thread(self._status_txn, self._status_db, dict(parts)))
            await asyncio.shield(self._status_write)

    async def _status_write_done(self) -> None:
        """Wait for the last batch's thread (its caller may have been cancelled and gone)."""
        write, self._status_write = self._status_write, None
        if write is not None:
            await asyncio.wait([write])
            if not write.cancelled() and write.exception() is not None:
                log.debug("a status batch whose caller left failed: %s", write.exception())

    @staticmethod
    def _write_status(db: sqlite3.Connection, parts: Mapping[ResourceKey, Status]) -> None:
        rows = [(k.kind, k.mesh, k.name, part, json.dumps(body)) for k, named in parts.items()
                for part, body in named.items()]  # fmt: skip
        db.executemany(
            "INSERT OR REPLACE INTO status_parts SELECT ?1, ?2, ?3, ?4, ?5 WHERE EXISTS"
            " (SELECT 1 FROM resources WHERE kind = ?1 AND mesh = ?2 AND name = ?3)",
            rows,
        )

    @classmethod
    def _status_txn(cls, db: sqlite3.Connection, parts: Mapping[ResourceKey, Status]) -> None:
        """In a worker thread, on the status connection: a batch of thousands of rows takes
        tens of milliseconds, which the event loop (pushes, ACKs) does not wait for. Committed
        in chunks: a resource write (on the loop) waits for one chunk at most, not the batch."""
        items = list(parts.items())
        for start in range(0, len(items), STATUS_CHUNK):
            db.execute("BEGIN IMMEDIATE")
            try:
                cls._write_status(db, dict(items[start : start + STATUS_CHUNK]))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    async def list_status(
        self, kind: str, mesh: str | None = None, name: str | None = None
    ) -> dict[ResourceKey, Status]:
        sql = "SELECT kind, mesh, name, part, body FROM status_parts WHERE kind=?"
        args = [kind]
        for column, value in (("mesh", mesh), ("name", name)):
            if value is not None:
                sql += f" AND {column}=?"
                args.append(value)
        out: dict[ResourceKey, Status] = {}
        for k, m, n, part, body in self.db.execute(sql, args).fetchall():
            out.setdefault(ResourceKey(k, m, n), {})[part] = json.loads(body)
        return out

    async def beat(self, replica: str) -> None:
        now = time.time()
        async with self._write_txn():
            self.wdb.execute("INSERT OR REPLACE INTO replicas VALUES (?, ?)", (replica, now))
            self.wdb.execute("DELETE FROM replicas WHERE beat_at < ?", (now - REPLICA_FORGOTTEN_AFTER,))

    async def replica_ages(self) -> dict[str, float]:
        now = time.time()
        return {r: max(0.0, now - t) for r, t in self.db.execute("SELECT id, beat_at FROM replicas").fetchall()}

    async def forget_replica(self, replica: str) -> None:
        async with self._write_txn():
            self.wdb.execute("DELETE FROM replicas WHERE id=?", (replica,))
