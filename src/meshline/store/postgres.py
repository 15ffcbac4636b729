"""PostgreSQL backend: several control-plane replicas share one database.

Writes are serialised by the row lock on the revision counter (taken first, held to
commit), so revisions are gapless and commit in revision order, and the resource row
is locked ``FOR UPDATE`` before its version is checked: two replicas cannot both win.

Change propagation: each write also appends its exact result to ``resource_changes``
and sends ``NOTIFY meshline_changes`` (payload: revision, op, key) in the same
transaction. Every replica LISTENs on a dedicated connection and, on a notification,
loads the changes after the last one it delivered, in revision order. Loading from
the change log rather than from ``resources`` gives each event the resource *as of
that revision* (the row may have been updated or deleted since), and lets a replica
whose LISTEN connection dropped catch up after reconnecting. A writer delivers its
own change right after commit, so local listeners see it as on SQLite. The log is
pruned to the last :data:`CHANGE_RETENTION`.

Each replica uses one connection for reads and writes (serialised by a lock; plenty
for a control plane's write rate) and one for LISTEN. A connection that breaks makes
the call in flight raise :class:`Unavailable` and is replaced on the next call; the
LISTEN connection reconnects by itself with backoff and then catches up.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any, Literal

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus
from psycopg.rows import TupleRow
from psycopg.types.json import Jsonb

from meshline.core.errors import ClientGone, Conflict, NotFound, Unavailable
from meshline.core.resource import KindRegistry, Resource, ResourceKey
from meshline.store.base import Abandoned, Change, Store, Write

log = logging.getLogger("meshline.store.postgres")

Connection = psycopg.AsyncConnection[TupleRow]

CHANNEL = "meshline_changes"
CHANGE_RETENTION = "15 minutes"  # how far behind a replica's LISTEN may fall and still catch up
_SCHEMA_LOCK = 0x6D6C_7374  # pg_advisory_xact_lock key: replicas starting together create the schema once

SCHEMA = """
CREATE TABLE IF NOT EXISTS resources (
    kind TEXT NOT NULL, mesh TEXT NOT NULL, name TEXT NOT NULL,
    version BIGINT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL, updated_at TIMESTAMPTZ NOT NULL,
    spec JSONB NOT NULL,
    PRIMARY KEY (kind, mesh, name)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL);
INSERT INTO meta (key, value) VALUES ('revision', 0) ON CONFLICT (key) DO NOTHING;
CREATE TABLE IF NOT EXISTS resource_changes (
    revision BIGINT PRIMARY KEY,
    op TEXT NOT NULL CHECK (op IN ('put', 'delete')),
    kind TEXT NOT NULL, mesh TEXT NOT NULL, name TEXT NOT NULL,
    created_at TIMESTAMPTZ, updated_at TIMESTAMPTZ, spec JSONB,  -- NULL for deletes
    committed_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
"""

_COLUMNS = "kind, mesh, name, version, extract(epoch FROM created_at)::float8, extract(epoch FROM updated_at)::float8, spec"
_KEY = "kind = %s AND mesh = %s AND name = %s"


class PostgresStore(Store):
    def __init__(self, kinds: KindRegistry, url: str) -> None:
        super().__init__(kinds)
        self.url = url
        self._conn: Connection | None = None
        self._lock = asyncio.Lock()  # one statement/transaction at a time on _conn
        self._sync_lock = asyncio.Lock()  # guards _seen: each change is queued exactly once
        self._seen = 0  # last revision queued for delivery
        self._listen_conn: Connection | None = None
        self._listen_task: asyncio.Task[None] | None = None

    # -- lifecycle -----------------------------------------------------------------
    async def start(self) -> None:
        try:
            async with self._session() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                await conn.execute(SCHEMA)
            # LISTEN before reading the revision: no later commit can go unnoticed.
            self._listen_conn = await self._connect_listener()
            self._seen = await self.revision()
        except BaseException:
            await self.close()
            raise
        self._listen_task = asyncio.get_running_loop().create_task(
            self._listen(), name="meshline-store-listen"
        )

    async def close(self) -> None:
        task, self._listen_task = self._listen_task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._stop_delivery()
        for conn in (self._listen_conn, self._conn):
            if conn is not None:
                await conn.close()
        self._listen_conn = self._conn = None

    async def _connect(self) -> Connection:
        try:
            return await psycopg.AsyncConnection.connect(self.url, autocommit=True)
        except psycopg.OperationalError as err:
            raise Unavailable(f"cannot connect to PostgreSQL ({_oneline(err)}); check the store URL") from err

    async def _connect_listener(self) -> Connection:
        conn = await self._connect()
        await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
        return conn

    @contextlib.asynccontextmanager
    async def _session(self) -> AsyncIterator[Connection]:
        """The shared connection, exclusively; reconnects if the last use broke it."""
        async with self._lock:
            if self._conn is None or self._conn.closed:
                self._conn = await self._connect()
            conn = self._conn
            try:
                yield conn
            except psycopg.OperationalError as err:
                raise Unavailable(f"PostgreSQL store unavailable: {_oneline(err)}") from err
            finally:
                if not conn.closed and conn.info.transaction_status != TransactionStatus.IDLE:
                    await conn.close()  # interrupted mid-transaction: start afresh next time

    # -- reads ---------------------------------------------------------------------
    def _resource(self, row: Sequence[Any]) -> Resource:
        kind, mesh, name, version, created, updated, spec = row
        return self.kinds.load(
            {
                "kind": kind,
                "mesh": mesh,
                "name": name,
                "version": version,
                "createdAt": created,
                "updatedAt": updated,
                "spec": spec,
            }
        )

    async def get(self, key: ResourceKey) -> Resource:
        async with self._session() as conn:
            cur = await conn.execute(f"SELECT {_COLUMNS} FROM resources WHERE {_KEY}", _key(key))
            row = await cur.fetchone()
        if row is None:
            raise NotFound(f"{key} not found; `meshline get {key.kind.lower()}s` lists what exists")
        return self._resource(row)

    async def list(self, kind: str | None = None, mesh: str | None = None) -> list[Resource]:
        query = f"SELECT {_COLUMNS} FROM resources WHERE true"
        args: builtins.list[str] = []
        if kind is not None:
            query += " AND kind = %s"
            args.append(kind)
        if mesh is not None:
            query += " AND mesh = %s"
            args.append(mesh)
        async with self._session() as conn:
            cur = await conn.execute(query + " ORDER BY kind, mesh, name", args)
            rows = await cur.fetchall()
        return [self._resource(r) for r in rows]

    async def revision(self) -> int:
        async with self._session() as conn:
            cur = await conn.execute("SELECT value FROM meta WHERE key = 'revision'")
            row = await cur.fetchone()
        assert row is not None, "meta row is created with the schema"
        return int(row[0])

    # -- writes --------------------------------------------------------------------
    async def create(self, resource: Resource) -> Resource:
        async with self._session() as conn, conn.transaction():
            change = await self._create(conn, resource)
        await self._after_commit(change)
        assert change.resource is not None
        return change.resource

    async def update(self, resource: Resource, expected_version: int | None = None) -> Resource:
        async with self._session() as conn, conn.transaction():
            change = await self._update(conn, resource, expected_version)
        await self._after_commit(change)
        assert change.resource is not None
        return change.resource

    async def put_all(
        self, writes: Sequence[Write], abandoned: Abandoned | None = None
    ) -> builtins.list[Resource]:
        changes: builtins.list[Change] = []
        async with self._session() as conn, conn.transaction():
            # the revision counter first, as every writer takes it: no lock-order deadlock
            await conn.execute("SELECT value FROM meta WHERE key = 'revision' FOR UPDATE")
            for resource, expected in writes:
                if expected == 0 or expected is None and await self._locked_version(conn, resource.key) is None:
                    changes.append(await self._create(conn, resource))
                else:
                    changes.append(await self._update(conn, resource, expected))
                if abandoned is not None and abandoned():
                    raise ClientGone(f"the client went away after {len(changes)} of {len(writes)} writes; none kept")
        for change in changes:
            await self._after_commit(change)
        return [c.resource for c in changes if c.resource is not None]

    async def _create(self, conn: Connection, resource: Resource) -> Change:
        rev, now = await self._next_revision(conn)
        if await self._locked_version(conn, resource.key) is not None:
            raise Conflict(f"{resource.key} already exists; use `meshline apply` to update it")
        cur = await conn.execute(
            f"INSERT INTO resources VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING {_COLUMNS}",
            (*_key(resource.key), rev, now, now, Jsonb(resource.spec.to_json())),
        )
        stored = self._resource(await _one(cur))
        await self._log_change(conn, "put", resource.key, rev)
        return Change("put", stored.key, rev, stored)

    async def _update(self, conn: Connection, resource: Resource, expected_version: int | None) -> Change:
        rev, now = await self._next_revision(conn)
        current = await self._locked_version(conn, resource.key)
        if current is None:
            raise NotFound(f"{resource.key} not found")
        if expected_version is not None and expected_version != current:
            raise Conflict(
                f"{resource.key} changed since you read it (version {expected_version}, now"
                f" {current}); read it again and retry"
            )
        cur = await conn.execute(
            f"UPDATE resources SET version = %s, updated_at = %s, spec = %s WHERE {_KEY}"
            f" RETURNING {_COLUMNS}",
            (rev, now, Jsonb(resource.spec.to_json()), *_key(resource.key)),
        )
        stored = self._resource(await _one(cur))
        await self._log_change(conn, "put", resource.key, rev)
        return Change("put", stored.key, rev, stored)

    async def delete(self, key: ResourceKey, expected_version: int | None = None) -> None:
        async with self._session() as conn, conn.transaction():
            rev, _ = await self._next_revision(conn)
            current = await self._locked_version(conn, key)
            if current is None:
                raise NotFound(f"{key} not found")
            if expected_version is not None and expected_version != current:
                raise Conflict(f"{key} changed since you read it; read it again and retry")
            await conn.execute(f"DELETE FROM resources WHERE {_KEY}", _key(key))
            await self._log_change(conn, "delete", key, rev)
        await self._after_commit(Change("delete", key, rev, None))

    async def _next_revision(self, conn: Connection) -> tuple[int, datetime]:
        """The write's revision and timestamp. The counter row stays locked until commit:
        writers are serialised, revisions commit in order, a rolled-back write leaves no gap."""
        cur = await conn.execute(
            "UPDATE meta SET value = value + 1 WHERE key = 'revision' RETURNING value, clock_timestamp()"
        )
        rev, now = await _one(cur)
        return int(rev), now

    async def _locked_version(self, conn: Connection, key: ResourceKey) -> int | None:
        cur = await conn.execute(f"SELECT version FROM resources WHERE {_KEY} FOR UPDATE", _key(key))
        row = await cur.fetchone()
        return None if row is None else int(row[0])

    async def _log_change(
        self, conn: Connection, op: Literal["put", "delete"], key: ResourceKey, rev: int
    ) -> None:
        if op == "put":
            await conn.execute(
                "INSERT INTO resource_changes (revision, op, kind, mesh, name, created_at, updated_at, spec)"
                f" SELECT %s, 'put', kind, mesh, name, created_at, updated_at, spec FROM resources WHERE {_KEY}",
                (rev, *_key(key)),
            )
        else:
            await conn.execute(
                "INSERT INTO resource_changes (revision, op, kind, mesh, name) VALUES (%s, 'delete', %s, %s, %s)",
                (rev, *_key(key)),
            )
        payload = json.dumps(
            {"revision": rev, "op": op, "kind": key.kind, "mesh": key.mesh, "name": key.name}
        )
        await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))
        if rev % 100 == 0:
            await conn.execute(
                f"DELETE FROM resource_changes WHERE committed_at < clock_timestamp() - interval '{CHANGE_RETENTION}'"
            )

    # -- change propagation ----------------------------------------------------------
    async def _after_commit(self, change: Change) -> None:
        try:
            await self._sync(change)
        except Unavailable as err:
            # Committed all the same; the LISTEN task delivers it once the database is back.
            log.warning("delivery of %s (revision %d) deferred: %s", change.key, change.revision, err)

    async def _sync(self, own: Change | None = None) -> None:
        """Queue every committed change after the last queued one, then deliver.

        ``own`` is the change this replica just committed: when it is the next one,
        it is queued without a round trip.
        """
        async with self._sync_lock:
            if own is not None and own.revision == self._seen + 1:
                self._pending.append(own)
                self._seen = own.revision
            elif own is None or own.revision > self._seen:
                for change in await self._changes_after(self._seen):
                    if change.revision != self._seen + 1:
                        log.error(
                            "missed store changes %d-%d (pruned from the change log before this replica"
                            " read them); subscribers may be stale until those resources change again",
                            self._seen + 1,
                            change.revision - 1,
                        )
                    self._pending.append(change)
                    self._seen = change.revision
        await self._deliver()

    async def _changes_after(self, revision: int) -> builtins.list[Change]:
        async with self._session() as conn:
            cur = await conn.execute(
                "SELECT revision, op, kind, mesh, name, extract(epoch FROM created_at)::float8,"
                " extract(epoch FROM updated_at)::float8, spec"
                " FROM resource_changes WHERE revision > %s ORDER BY revision",
                (revision,),
            )
            rows = await cur.fetchall()
        changes: builtins.list[Change] = []
        for rev, op, kind, mesh, name, created, updated, spec in rows:
            key = ResourceKey(kind, mesh, name)
            if op == "put":
                res = self._resource((kind, mesh, name, rev, created, updated, spec))
                changes.append(Change("put", key, rev, res))
            else:
                changes.append(Change("delete", key, rev, None))
        return changes

    async def _listen(self) -> None:
        """Deliver other replicas' changes; reconnect (and catch up) if LISTEN drops."""
        backoff = 0.1
        while True:
            try:
                if self._listen_conn is None:
                    self._listen_conn = await self._connect_listener()
                    await self._sync()  # whatever was committed while we were not listening
                    backoff = 0.1
                async with contextlib.aclosing(self._listen_conn.notifies()) as notes:
                    async for note in notes:
                        if _revision(note.payload) > self._seen:
                            await self._sync()
                raise psycopg.OperationalError("LISTEN connection closed")
            except (psycopg.OperationalError, Unavailable) as err:
                log.warning(
                    "store change feed interrupted (%s); reconnecting in %.1fs", _oneline(err), backoff
                )
            except Exception:
                log.exception("store change feed failed; reconnecting in %.1fs", backoff)
            if self._listen_conn is not None:
                await self._listen_conn.close()
                self._listen_conn = None
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)


def _key(key: ResourceKey) -> tuple[str, str, str]:
    return (key.kind, key.mesh, key.name)


async def _one(cur: psycopg.AsyncCursor[TupleRow]) -> TupleRow:
    row = await cur.fetchone()
    assert row is not None
    return row


def _revision(payload: str) -> int:
    try:
        return int(json.loads(payload)["revision"])
    except (ValueError, TypeError, KeyError):
        return 1 << 62  # not ours or malformed: just look


def _oneline(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__
