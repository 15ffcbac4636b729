"""PostgresStore: the conformance suite, plus what only a shared database has: replicas.

Needs PostgreSQL (default ``postgresql://postgres@127.0.0.1:5432/test``, override with
``MESHLINE_TEST_POSTGRES``). Each test gets a fresh database, dropped afterwards.
Unreachable server: skipped locally, a failure when ``CI=true``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg import sql

from meshline.core.errors import Conflict, Unavailable
from meshline.core.resource import Resource
from meshline.store.base import Change, Resync, WatchEvent
from meshline.store.factory import open_store
from meshline.store.postgres import PostgresStore
from meshline.testing.store_conformance import (
    KINDS,
    Recorder,
    StoreConformance,
    StoreFactory,
    a_dataplane,
    a_mesh,
)

pytestmark = pytest.mark.postgres

ADMIN_URL = os.environ.get("MESHLINE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def admin_url() -> str:
    try:
        psycopg.connect(ADMIN_URL, connect_timeout=3).close()
    except psycopg.OperationalError as err:
        where = urlsplit(ADMIN_URL).netloc.rpartition("@")[2]
        reason = (
            f"PostgreSQL not reachable at {where}; start it with `sudo service postgresql start` or"
            " `docker run -d -p 5432:5432 -e POSTGRES_HOST_AUTH_METHOD=trust postgres:16`"
            f" (or set MESHLINE_TEST_POSTGRES). Error: {' '.join(str(err).split())}"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return ADMIN_URL


@pytest.fixture
def database_url(admin_url: str) -> Iterator[str]:
    name = f"meshline_test_{secrets.token_hex(6)}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield urlsplit(admin_url)._replace(path="/" + name).geturl()
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


class TestPostgresStore(StoreConformance):
    @pytest.fixture
    def store_factory(self, database_url: str) -> StoreFactory:
        return lambda: PostgresStore(KINDS, database_url)


# -- replicas: two stores on one database ------------------------------------------------


@pytest.fixture
async def replicas(database_url: str) -> AsyncIterator[tuple[PostgresStore, PostgresStore]]:
    a, b = PostgresStore(KINDS, database_url), PostgresStore(KINDS, database_url)
    try:
        await asyncio.gather(a.start(), b.start())  # both create the schema at once: must not clash
        yield a, b
    finally:
        await a.close()
        await b.close()


async def test_replica_sees_other_replicas_writes_in_order(
    replicas: tuple[PostgresStore, PostgresStore],
) -> None:
    a, b = replicas
    seen_by_a, seen_by_b = Recorder(), Recorder()
    a.subscribe(seen_by_a)
    b.subscribe(seen_by_b)

    m = await a.create(a_mesh("default"))
    # Written and then superseded before B looks: B must still get it as of each revision.
    m2 = await a.update(a_mesh("default", trust_domain="two.example"))
    dp = await b.create(a_dataplane("default", "web"))
    m3 = await b.update(a_mesh("default", trust_domain="three.example"), expected_version=m2.version)
    await a.delete(dp.key)
    expected = [
        Change("put", m.key, m.version, m),
        Change("put", m.key, m2.version, m2),
        Change("put", dp.key, dp.version, dp),
        Change("put", m.key, m3.version, m3),
        Change("delete", dp.key, await a.revision(), None),
    ]
    assert await seen_by_b.wait_for(5) == expected
    assert await seen_by_a.wait_for(5) == expected


async def test_interleaved_writers_each_replica_sees_every_revision_once(
    replicas: tuple[PostgresStore, PostgresStore],
) -> None:
    a, b = replicas
    seen_by_a, seen_by_b = Recorder(), Recorder()
    a.subscribe(seen_by_a)
    b.subscribe(seen_by_b)
    written = await asyncio.gather(
        *(
            store.create(a_mesh(f"m{i}"))
            for i in range(15)
            for store in (a, b)
            if (i % 2 == 0) == (store is a)
        )
    )
    assert sorted(r.version for r in written) == list(range(1, 16))
    assert (await seen_by_a.wait_for(15)) == (await seen_by_b.wait_for(15))
    assert seen_by_b.revisions() == list(range(1, 16))


async def test_concurrent_conflicting_updates_across_replicas_exactly_one_wins(
    replicas: tuple[PostgresStore, PostgresStore],
) -> None:
    a, b = replicas
    current = await a.create(a_mesh("default"))
    for round_ in range(10):
        results = await asyncio.gather(
            a.update(a_mesh("default", trust_domain=f"a{round_}.example"), expected_version=current.version),
            b.update(a_mesh("default", trust_domain=f"b{round_}.example"), expected_version=current.version),
            return_exceptions=True,
        )
        winners = [r for r in results if isinstance(r, Resource)]
        losers = [r for r in results if not isinstance(r, Resource)]
        assert len(winners) == 1 and [type(e) for e in losers] == [Conflict], results
        current = winners[0]
        assert await a.get(current.key) == current == await b.get(current.key)


async def test_concurrent_creates_across_replicas_exactly_one_wins(
    replicas: tuple[PostgresStore, PostgresStore],
) -> None:
    a, b = replicas
    results = await asyncio.gather(a.create(a_mesh("x")), b.create(a_mesh("x")), return_exceptions=True)
    assert sorted(type(r).__name__ for r in results) == ["Conflict", "Resource"]


async def test_unconditional_updates_from_both_replicas_lose_no_revision(
    replicas: tuple[PostgresStore, PostgresStore],
) -> None:
    a, b = replicas
    await a.create(a_mesh("default"))
    results = await asyncio.gather(
        *(s.update(a_mesh("default", trust_domain=f"{i}.example")) for i in range(10) for s in (a, b))
    )
    assert sorted(r.version for r in results) == list(range(2, 22))
    last = max(results, key=lambda r: r.version)
    assert await b.get(last.key) == last
    assert await a.revision() == await b.revision() == last.version


async def test_replicas_recover_after_their_connections_are_killed(
    replicas: tuple[PostgresStore, PostgresStore], database_url: str
) -> None:
    a, b = replicas
    seen_by_b = Recorder()
    b.subscribe(seen_by_b)
    m = await a.create(a_mesh("default"))
    await seen_by_b.wait_for(1)

    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as admin:
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    with pytest.raises(Unavailable):  # the broken connection is reported once...
        await b.get(m.key)
    assert await b.get(m.key) == m  # ...and replaced on the next call
    with pytest.raises(Unavailable):
        await a.create(a_mesh("other"))
    other = await a.create(a_mesh("other"))
    # B's LISTEN connection reconnects and catches up on what it missed.
    assert (await seen_by_b.wait_for(2))[1] == Change("put", other.key, other.version, other)


async def test_start_fails_clearly_when_the_database_is_unreachable() -> None:
    store = PostgresStore(KINDS, "postgresql://postgres@127.0.0.1:1/nowhere?connect_timeout=2")
    with pytest.raises(Unavailable, match="cannot connect to PostgreSQL"):
        await store.start()
    await store.close()


def test_open_store_builds_a_postgres_store() -> None:
    assert isinstance(open_store("postgresql://postgres@127.0.0.1/x", KINDS), PostgresStore)


async def test_a_watcher_is_resynchronised_when_changes_were_pruned_before_it_read_them(
    replicas: tuple[PostgresStore, PostgresStore], database_url: str
) -> None:
    a, b = replicas
    first = await a.create(a_mesh("first"))
    events: list[WatchEvent] = []
    await b.watch(events.append)
    assert isinstance(events[0], Resync) and events[0].resources == [first]
    assert b._listen_task is not None
    b._listen_task.cancel()  # B stops listening for a while...
    with contextlib.suppress(asyncio.CancelledError):
        await b._listen_task
    lost = await a.create(a_mesh("lost"))
    seen = await a.create(a_mesh("seen"))
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as admin:
        await admin.execute("DELETE FROM resource_changes WHERE revision = %s", (lost.version,))  # ...and it is pruned
    b._listen_task = asyncio.get_running_loop().create_task(b._listen())
    async with asyncio.timeout(5):
        while not any(isinstance(e, Resync) and len(e.resources) == 3 for e in events[1:]):
            await asyncio.sleep(0.01)
    resync = next(e for e in events[1:] if isinstance(e, Resync))
    assert sorted(r.name for r in resync.resources) == ["first", "lost", "seen"]
    assert resync.revision >= seen.version
