"""The store conformance suite: the behaviour every :class:`~meshline.store.base.Store` owes.

A backend's test module subclasses :class:`StoreConformance` and provides one fixture,
``store_factory``: a callable that returns a new, not yet started store on the *same*
backing storage each time (so the suite can reopen it and run two instances).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from meshline.core import dataplane, mesh
from meshline.core.errors import ClientGone, Conflict, NotFound
from meshline.core.resource import KindRegistry, Resource, ResourceKey
from meshline.store.base import Change, Store

KINDS = KindRegistry([mesh.KIND, dataplane.KIND])

StoreFactory = Callable[[], Store]
Opener = Callable[[], Awaitable[Store]]


def a_mesh(name: str, trust_domain: str = "meshline.local") -> Resource:
    return KINDS.decode({"kind": "Mesh", "name": name, "spec": {"trustDomain": trust_domain}})


def a_dataplane(mesh_name: str, name: str, port: int = 8080) -> Resource:
    return KINDS.decode(
        {
            "kind": "Dataplane",
            "mesh": mesh_name,
            "name": name,
            "spec": {
                "address": "10.0.0.1",
                "inbound": [{"port": port, "servicePort": 9000, "tags": {"service": name}}],
            },
        }
    )


def same_content(stored: Resource, written: Resource) -> bool:
    return (stored.key, stored.spec) == (written.key, written.spec)


class Recorder:
    """A listener that keeps what it was given; ``wait_for`` copes with asynchronous delivery."""

    def __init__(self) -> None:
        self.changes: list[Change] = []

    def __call__(self, change: Change) -> None:
        self.changes.append(change)

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[Change]:
        try:
            async with asyncio.timeout(timeout):
                while len(self.changes) < count:
                    await asyncio.sleep(0.005)
        except TimeoutError:
            pytest.fail(f"expected {count} changes within {timeout}s, got {self.revisions()}")
        await asyncio.sleep(0.05)  # a duplicate or stray change would show up by now
        assert len(self.changes) == count, f"expected {count} changes, got {self.revisions()}"
        return self.changes

    def revisions(self) -> list[int]:
        return [c.revision for c in self.changes]


class StoreConformance:
    @pytest.fixture
    def store_factory(self) -> StoreFactory:
        raise NotImplementedError("the backend's test class provides store_factory")

    @pytest.fixture
    async def open_store(self, store_factory: StoreFactory) -> AsyncIterator[Opener]:
        opened: list[Store] = []

        async def open_() -> Store:
            store = store_factory()
            await store.start()
            opened.append(store)
            return store

        yield open_
        for store in opened:
            await store.close()

    @pytest.fixture
    async def store(self, open_store: Opener) -> Store:
        return await open_store()

    # -- create / get / list ---------------------------------------------------------
    async def test_create_then_get(self, store: Store) -> None:
        assert await store.revision() == 0
        created = await store.create(a_mesh("default"))
        assert same_content(created, a_mesh("default"))
        assert created.version == await store.revision() > 0
        assert 0 < created.created_at == created.updated_at
        assert await store.get(created.key) == created

    async def test_get_missing_raises_not_found(self, store: Store) -> None:
        with pytest.raises(NotFound):
            await store.get(ResourceKey("Mesh", "", "nope"))

    async def test_list_filters_by_kind_and_mesh_and_sorts(self, store: Store) -> None:
        for res in [
            a_mesh("b"),
            a_dataplane("b", "web"),
            a_dataplane("a", "web"),
            a_mesh("a"),
            a_dataplane("a", "api"),
            a_dataplane("b", "api"),
        ]:
            await store.create(res)

        def keys(resources: list[Resource]) -> list[tuple[str, str, str]]:
            return [(r.kind, r.mesh, r.name) for r in resources]

        assert keys(await store.list()) == [
            ("Dataplane", "a", "api"),
            ("Dataplane", "a", "web"),
            ("Dataplane", "b", "api"),
            ("Dataplane", "b", "web"),
            ("Mesh", "", "a"),
            ("Mesh", "", "b"),
        ]
        assert keys(await store.list(kind="Mesh")) == [("Mesh", "", "a"), ("Mesh", "", "b")]
        assert keys(await store.list(mesh="b")) == [("Dataplane", "b", "api"), ("Dataplane", "b", "web")]
        assert keys(await store.list(kind="Dataplane", mesh="a")) == [
            ("Dataplane", "a", "api"),
            ("Dataplane", "a", "web"),
        ]
        assert await store.list(kind="Dataplane", mesh="c") == []
        listed = await store.list(kind="Mesh")
        assert listed[0] == await store.get(listed[0].key)

    async def test_create_duplicate_conflicts_and_changes_nothing(self, store: Store) -> None:
        first = await store.create(a_mesh("default"))
        with pytest.raises(Conflict):
            await store.create(a_mesh("default", trust_domain="other.local"))
        assert await store.get(first.key) == first
        assert await store.revision() == first.version

    # -- update ------------------------------------------------------------------------
    async def test_update_replaces_spec_and_bumps_version(self, store: Store) -> None:
        created = await store.create(a_mesh("default"))
        updated = await store.update(
            a_mesh("default", trust_domain="corp.example"), expected_version=created.version
        )
        assert updated.version > created.version
        assert updated.version == await store.revision()
        assert updated.created_at == created.created_at
        assert updated.updated_at >= created.updated_at
        assert await store.get(created.key) == updated
        assert same_content(updated, a_mesh("default", trust_domain="corp.example"))
        again = await store.update(
            a_mesh("default", trust_domain="third.example")
        )  # no version: unconditional
        assert again.version > updated.version

    async def test_update_with_stale_version_conflicts_and_changes_nothing(self, store: Store) -> None:
        created = await store.create(a_mesh("default"))
        current = await store.update(a_mesh("default", trust_domain="v2.example"))
        recorder = Recorder()
        store.subscribe(recorder)
        with pytest.raises(Conflict):
            await store.update(a_mesh("default", trust_domain="v3.example"), expected_version=created.version)
        assert await store.get(created.key) == current
        assert await store.revision() == current.version
        await asyncio.sleep(0.05)
        # Delivery may be asynchronous (PostgreSQL NOTIFY): the two writes above can still
        # arrive after subscribing; the refused update must add nothing after them.
        assert [c for c in recorder.changes if c.revision > current.version] == []

    async def test_update_missing_raises_not_found(self, store: Store) -> None:
        with pytest.raises(NotFound):
            await store.update(a_mesh("ghost"))
        with pytest.raises(NotFound):
            await store.update(a_mesh("ghost"), expected_version=3)
        assert await store.revision() == 0

    async def test_concurrent_updates_with_same_expected_version_one_wins(self, store: Store) -> None:
        created = await store.create(a_mesh("default"))
        results = await asyncio.gather(
            store.update(a_mesh("default", trust_domain="one.example"), expected_version=created.version),
            store.update(a_mesh("default", trust_domain="two.example"), expected_version=created.version),
            return_exceptions=True,
        )
        winners = [r for r in results if isinstance(r, Resource)]
        assert len(winners) == 1
        assert [type(r) for r in results if not isinstance(r, Resource)] == [Conflict]
        assert await store.get(created.key) == winners[0]

    # -- delete ------------------------------------------------------------------------
    async def test_delete(self, store: Store) -> None:
        created = await store.create(a_mesh("default"))
        other = await store.create(a_mesh("other"))
        await store.delete(created.key)
        assert await store.revision() > other.version
        with pytest.raises(NotFound):
            await store.get(created.key)
        assert await store.list() == [other]
        with pytest.raises(NotFound):
            await store.delete(created.key)
        await store.delete(other.key, expected_version=other.version)
        assert await store.list() == []

    async def test_delete_with_stale_version_conflicts_and_changes_nothing(self, store: Store) -> None:
        created = await store.create(a_mesh("default"))
        current = await store.update(a_mesh("default", trust_domain="v2.example"))
        with pytest.raises(Conflict):
            await store.delete(created.key, expected_version=created.version)
        assert await store.get(created.key) == current
        assert await store.revision() == current.version

    # -- revisions and put ---------------------------------------------------------------
    async def test_revisions_increase_with_every_write_and_only_then(self, store: Store) -> None:
        seen = [await store.revision()]
        seen.append((await store.create(a_mesh("a"))).version)
        seen.append((await store.create(a_dataplane("a", "web"))).version)
        seen.append((await store.update(a_mesh("a", trust_domain="x.example"))).version)
        await store.delete(ResourceKey("Dataplane", "a", "web"))
        seen.append(await store.revision())
        seen.append((await store.put(a_mesh("b"))).version)
        assert seen == sorted(set(seen)), f"revisions must strictly increase: {seen}"
        with pytest.raises(Conflict):
            await store.create(a_mesh("a"))
        with pytest.raises(NotFound):
            await store.update(a_mesh("zz"))
        with pytest.raises(NotFound):
            await store.delete(ResourceKey("Mesh", "", "zz"))
        assert await store.revision() == seen[-1]

    async def test_put_creates_or_updates(self, store: Store) -> None:
        created = await store.put(a_mesh("default"))
        assert await store.get(created.key) == created
        updated = await store.put(
            a_mesh("default", trust_domain="b.example"), expected_version=created.version
        )
        assert updated.version > created.version and updated.created_at == created.created_at
        assert same_content(await store.get(created.key), a_mesh("default", trust_domain="b.example"))
        with pytest.raises(Conflict):
            await store.put(a_mesh("default", trust_domain="c.example"), expected_version=created.version)
        with pytest.raises(NotFound):  # a version says "update what I read": it must exist
            await store.put(a_mesh("ghost"), expected_version=updated.version)
        assert await store.get(created.key) == updated

    # -- put_all: one transaction ----------------------------------------------------------
    async def test_put_all_writes_everything_in_order_and_delivers_after_commit(self, store: Store) -> None:
        rec = Recorder()
        store.subscribe(rec)
        first = await store.put(a_mesh("a"))
        await rec.wait_for(1)
        stored = await store.put_all(
            [(a_mesh("a", trust_domain="x.example"), first.version), (a_mesh("b"), 0), (a_mesh("c"), None)]
        )
        assert [r.name for r in stored] == ["a", "b", "c"]
        assert [r.version for r in stored] == [first.version + 1, first.version + 2, first.version + 3]
        assert await store.revision() == first.version + 3
        changes = await rec.wait_for(4)
        assert [c.revision for c in changes[1:]] == [r.version for r in stored]
        assert same_content(await store.get(first.key), a_mesh("a", trust_domain="x.example"))

    @pytest.mark.parametrize("failing", ["stale version", "already exists", "missing"])
    async def test_put_all_is_all_or_nothing(self, store: Store, failing: str) -> None:
        existing = await store.put(a_mesh("a"))
        before = await store.revision()
        bad = {
            "stale version": (a_mesh("a", trust_domain="x.example"), existing.version + 100),
            "already exists": (a_mesh("a"), 0),
            "missing": (a_mesh("ghost"), 7),
        }[failing]
        many = [(a_mesh(f"m{i}"), 0) for i in range(50)]
        with pytest.raises((Conflict, NotFound)):
            await store.put_all([*many, bad, (a_mesh("z"), None)])
        assert await store.revision() == before
        assert [r.name for r in await store.list("Mesh")] == ["a"]
        # the store still works after the rollback
        assert (await store.put_all([(a_mesh("b"), 0)]))[0].version == before + 1

    async def test_put_all_stops_and_rolls_back_when_abandoned(self, store: Store) -> None:
        before = await store.revision()
        asked = 0

        def gone() -> bool:
            nonlocal asked
            asked += 1
            return asked >= 20

        with pytest.raises(ClientGone):
            await store.put_all([(a_mesh(f"m{i}"), 0) for i in range(100)], abandoned=gone)
        assert asked == 20  # stopped at once, not after writing the rest
        assert await store.revision() == before and await store.list("Mesh") == []

    # -- change events -------------------------------------------------------------------
    async def test_changes_are_delivered_in_order_with_op_revision_and_resource(self, store: Store) -> None:
        recorder = Recorder()
        store.subscribe(recorder)
        m = await store.create(a_mesh("default"))
        dp = await store.create(a_dataplane("default", "web"))
        m2 = await store.update(a_mesh("default", trust_domain="b.example"), expected_version=m.version)
        await store.delete(dp.key)
        deleted_at = await store.revision()
        assert await recorder.wait_for(4) == [
            Change("put", m.key, m.version, m),
            Change("put", dp.key, dp.version, dp),
            Change("put", m.key, m2.version, m2),
            Change("delete", dp.key, deleted_at, None),
        ]

    async def test_unsubscribe_stops_delivery(self, store: Store) -> None:
        kept, dropped = Recorder(), Recorder()
        store.subscribe(kept)
        unsubscribe = store.subscribe(dropped)
        await store.create(a_mesh("a"))
        await dropped.wait_for(1)
        unsubscribe()
        await store.create(a_mesh("b"))
        await kept.wait_for(2)
        assert len(dropped.changes) == 1

    async def test_concurrent_writers_and_slow_listeners_see_revision_order(self, store: Store) -> None:
        """One change at a time reaches each listener, in revision order, even when a
        slow listener is still busy while other writers commit."""
        fast = Recorder()
        slow_calls: list[tuple[str, int]] = []

        async def slow(change: Change) -> None:
            slow_calls.append(("start", change.revision))
            await asyncio.sleep(0.001 * (change.revision % 3))
            slow_calls.append(("end", change.revision))

        store.subscribe(slow)
        store.subscribe(fast)
        written = await asyncio.gather(*(store.create(a_mesh(f"m{i}")) for i in range(20)))
        versions = sorted(r.version for r in written)
        assert len(set(versions)) == 20
        await fast.wait_for(20)
        assert fast.revisions() == versions
        assert slow_calls == [(step, v) for v in versions for step in ("start", "end")]

    async def test_listener_may_write_to_the_store(self, store: Store) -> None:
        recorder = Recorder()

        async def add_dataplane(change: Change) -> None:
            if change.op == "put" and change.key.kind == "Mesh":
                await store.create(a_dataplane(change.key.name, "auto"))

        store.subscribe(add_dataplane)
        store.subscribe(recorder)
        await store.create(a_mesh("a"))
        await store.create(a_mesh("b"))
        changes = await recorder.wait_for(4)
        assert recorder.revisions() == sorted(recorder.revisions())
        assert sorted(str(c.key) for c in changes) == [
            "Dataplane a/auto",
            "Dataplane b/auto",
            "Mesh a",
            "Mesh b",
        ]

    async def test_failing_listener_neither_fails_the_write_nor_starves_others(
        self, store: Store, caplog: pytest.LogCaptureFixture
    ) -> None:
        def broken(change: Change) -> None:
            raise RuntimeError("listener bug")

        recorder = Recorder()
        store.subscribe(broken)
        store.subscribe(recorder)
        with caplog.at_level(logging.ERROR, logger="meshline.store"):
            created = await store.create(a_mesh("a"))
            await recorder.wait_for(1)
        assert await store.get(created.key) == created
        assert "listener bug" in caplog.text

    # -- persistence -----------------------------------------------------------------------
    async def test_persists_across_close_and_reopen(self, open_store: Opener) -> None:
        first = await open_store()
        await first.create(a_mesh("a"))
        kept = await first.update(a_mesh("a", trust_domain="kept.example"))
        dp = await first.create(a_dataplane("a", "web"))
        await first.delete(dp.key)
        revision = await first.revision()
        await first.close()

        second = await open_store()
        assert await second.list() == [kept]
        assert await second.get(kept.key) == kept
        assert await second.revision() == revision
        assert (await second.create(a_mesh("b"))).version > revision
        with pytest.raises(Conflict):
            await second.update(a_mesh("a"), expected_version=kept.version - 1)

    async def test_close_leaves_no_tasks_behind(self, open_store: Opener) -> None:
        store = await open_store()
        blocked = asyncio.Event()

        async def stuck(change: Change) -> None:
            blocked.set()
            await asyncio.sleep(3600)

        store.subscribe(stuck)
        write = asyncio.create_task(store.create(a_mesh("a")))
        await blocked.wait()
        write.cancel()  # a writer that gives up must not take the delivery down with it...
        await asyncio.gather(write, return_exceptions=True)
        await store.close()  # ...but close() ends it
        assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []
