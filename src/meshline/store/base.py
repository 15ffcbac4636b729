"""The store interface every backend implements, and its change-event model.

Versions: every write gets the next value of one store-wide, monotonically increasing
revision; a resource's ``version`` is the revision of its last write. An update or
delete that names an ``expected_version`` other than the stored one is refused with
:class:`~meshline.core.errors.Conflict` (optimistic concurrency: a stale write is
refused, never lost).

Versions are opaque outside the store: a watcher compares nothing (see :meth:`Store.watch`);
only a backend orders revisions.

Change events: :meth:`Store.subscribe` delivers every committed write, including
writes made by other control-plane replicas on a shared backend, in revision order,
each change to every listener before the next change goes to any. A listener may run
after the write that caused it has returned (always so for other replicas' writes, and
for a write made while a delivery is already running, e.g. by a listener). A listener
that raises is logged and does not fail the write or stop delivery to the others.

Status (what is *observed* about a resource, e.g. a dataplane's xDS state and certificate,
as opposed to its spec, what is *wanted*) is kept next to each resource, in named parts that
different writers own (the replica holding a sidecar's ADS stream writes ``xds``, the one
that signed its certificate writes ``certificate``). Status writes take no revision, send no
change event and never conflict: they are frequent, batched, and readers poll them (``meshline
get``, the dashboard). A resource's status goes with it when it is deleted, and status for a
resource that does not exist is dropped. Replicas announce themselves with :meth:`Store.beat`;
a status part that names a replica whose beat is old describes a stream that is gone.
"""

from __future__ import annotations

import abc
import asyncio
import builtins
import contextlib
import inspect
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from meshline.core.resource import KindRegistry, Resource, ResourceKey

log = logging.getLogger("meshline.store")
REPLICA_FORGOTTEN_AFTER = 3600.0  # seconds without a beat before a replica's row is pruned


@dataclass(frozen=True)
class Change:
    op: Literal["put", "delete"]
    key: ResourceKey
    revision: int
    resource: Resource | None  # None for deletes


Listener = Callable[[Change], Awaitable[None] | None]

# One write of :meth:`Store.put_all`: the resource and the version it must replace (None:
# create or replace whatever is there; 0: there must be none yet; n: the stored version is n).
Write = tuple[Resource, int | None]
# Asked between the writes of a put_all: True stops it (the client went away).
Abandoned = Callable[[], bool]


@dataclass(frozen=True)
class Resync:
    """Every resource as of ``revision``: a watcher replaces whatever it holds with these."""

    resources: list[Resource]
    revision: int


WatchEvent = Change | Resync
WatchHandler = Callable[[WatchEvent], Awaitable[None] | None]
_RESYNC = None  # in the delivery queue: send every watcher a fresh Resync here


class _Watch:
    def __init__(self, handler: WatchHandler) -> None:
        self.handler = handler
        self.live = False
        self.held: deque[Change] = deque()  # changes that arrive while a Resync is being made

    async def on_change(self, change: Change) -> None:
        if self.live:
            await _call(self.handler, change)
        else:
            self.held.append(change)


async def _call(handler: Callable[[WatchEvent], Awaitable[None] | None], event: WatchEvent) -> None:
    result = handler(event)
    if inspect.isawaitable(result):
        await result
# A resource's status: part name ("xds", "certificate") -> that part (JSON-compatible).
Status = dict[str, Any]


class Store(abc.ABC):
    """Async resource store. Implementations must pass :mod:`meshline.testing.store_conformance`."""

    # list() orders names by code point, as Python's sorted() does (SQLite's BINARY collation;
    # PostgreSQL's order follows the database's collation), so a caller may sort its own copy
    lists_in_code_point_order = False

    def __init__(self, kinds: KindRegistry) -> None:
        self.kinds = kinds
        # Labels every write gets unless the resource sets them itself (the control plane
        # puts its origin and zone here: core.labels.system_labels).
        self.stamp_labels: dict[str, str] = {}
        self._listeners: list[Listener] = []
        # committed, not yet delivered, in revision order (_RESYNC: watchers need a fresh list)
        self._pending: deque[Change | None] = deque()
        self._watches: list[_Watch] = []
        self._delivery: asyncio.Task[None] | None = None

    # -- lifecycle -----------------------------------------------------------------
    @abc.abstractmethod
    async def start(self) -> None:
        """Open connections, create the schema if missing."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    # -- reads ---------------------------------------------------------------------
    @abc.abstractmethod
    async def get(self, key: ResourceKey) -> Resource:
        """Raise NotFound if absent."""

    @abc.abstractmethod
    async def list(self, kind: str | None = None, mesh: str | None = None) -> list[Resource]:
        """Sorted by (kind, mesh, name). ``mesh=None`` means every mesh."""

    @abc.abstractmethod
    async def revision(self) -> int:
        """The revision of the last committed write (0 for an empty store)."""

    # -- writes --------------------------------------------------------------------
    @abc.abstractmethod
    async def create(self, resource: Resource) -> Resource:
        """Store a new resource; Conflict if one with the same key exists."""

    @abc.abstractmethod
    async def update(self, resource: Resource, expected_version: int | None = None) -> Resource:
        """Replace an existing resource. NotFound if absent; Conflict if
        ``expected_version`` is given and differs from the stored version."""

    @abc.abstractmethod
    async def delete(self, key: ResourceKey, expected_version: int | None = None) -> None:
        """NotFound if absent; Conflict on a stale ``expected_version``."""

    # -- status ----------------------------------------------------------------------
    @abc.abstractmethod
    async def put_status(self, parts: Mapping[ResourceKey, Status]) -> None:
        """For each key, set the given parts of its status (replacing each named part whole;
        parts not named are kept), atomically per key (a large batch may commit in chunks, so
        that resource writes never wait long behind it). Keys with no resource are skipped."""

    @abc.abstractmethod
    async def list_status(
        self, kind: str, mesh: str | None = None, name: str | None = None
    ) -> dict[ResourceKey, Status]:
        """The status of every resource of ``kind`` (in ``mesh``, named ``name``; None: any)
        that has one."""

    @abc.abstractmethod
    async def beat(self, replica: str) -> None:
        """Record that control-plane replica ``replica`` is alive now (by the store's clock)."""

    @abc.abstractmethod
    async def replica_ages(self) -> dict[str, float]:
        """Seconds since each replica's last beat, measured by the store's clock (so replicas
        need not agree on the time). Replicas silent for an hour are forgotten."""

    @abc.abstractmethod
    async def forget_replica(self, replica: str) -> None:
        """A replica that stops says goodbye: its status parts read as offline at once."""

    async def put(self, resource: Resource, expected_version: int | None = None) -> Resource:
        """Create or update (what ``meshline apply`` does)."""
        from meshline.core.errors import NotFound

        try:
            return await self.update(resource, expected_version)
        except NotFound:
            if expected_version:
                raise
            return await self.create(resource)

    def stamped(self, resource: Resource) -> Resource:
        """``resource`` as it will be stored: with :attr:`stamp_labels` where it has none of its own."""
        missing = {k: v for k, v in self.stamp_labels.items() if k not in resource.labels}
        return resource.with_labels({**resource.labels, **missing}) if missing else resource

    @abc.abstractmethod
    async def put_all(self, writes: Sequence[Write], abandoned: Abandoned | None = None) -> builtins.list[Resource]:
        """Put every resource in **one transaction**: all are written or none (a Conflict or
        NotFound on any, a crash, a lost connection, ``abandoned()`` turning True: nothing).
        Each write gets its own revision, in order; changes are delivered after the commit.
        ``abandoned`` is asked between writes; True rolls back and raises ClientGone."""

    # -- change events -------------------------------------------------------------
    def subscribe(self, listener: Listener) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    async def watch(self, handler: WatchHandler) -> Callable[[], None]:
        """List and watch in one: ``handler`` gets a :class:`Resync` (every resource as of one
        revision) before this returns, then every :class:`Change` after that revision, in
        order, exactly once. It gets another Resync whenever the backend cannot promise it saw
        every change (PostgreSQL: changes pruned from the log before this replica read them),
        so a watcher never has to compare versions to stay correct: a Change replaces what it
        holds for one key, a Resync replaces everything. Returns the cancel."""
        watch = _Watch(handler)
        unsubscribe = self.subscribe(watch.on_change)
        self._watches.append(watch)

        def cancel() -> None:
            unsubscribe()
            with contextlib.suppress(ValueError):
                self._watches.remove(watch)

        try:
            await self._resync(watch)
        except BaseException:
            cancel()
            raise
        return cancel

    async def _resync(self, watch: _Watch) -> None:
        watch.live = False
        revision = await self.revision()  # before listing: a write in between shows up in both,
        resources = await self.list()  # and replaying it after the list is harmless
        await _call(watch.handler, Resync(resources, revision))
        while watch.held:
            change = watch.held.popleft()
            if change.revision > revision:  # ordering is the store's business, nobody else's
                await _call(watch.handler, change)
        watch.live = True

    def _need_resync(self) -> None:
        """Backends call this where continuity broke; watchers get a Resync at that point."""
        self._pending.append(_RESYNC)

    async def _emit(self, change: Change) -> None:
        """Queue ``change`` and deliver it. Call it right after the commit, with no
        ``await`` in between, so the queue stays in revision order."""
        self._pending.append(change)
        await self._deliver()

    async def _deliver(self) -> None:
        """Deliver queued changes, in order, from one delivery task at a time.

        A change queued while a delivery runs (by a concurrent writer, or by a listener
        that writes) is picked up by that delivery once the current change has reached
        every listener: every listener sees revision order and nothing can deadlock.
        The caller waits for the delivery, shielded: a cancelled writer does not leave
        a change half-delivered.
        """
        if self._delivery is not None and not self._delivery.done():
            return
        self._delivery = asyncio.get_running_loop().create_task(self._drain())
        await asyncio.shield(self._delivery)

    async def _drain(self) -> None:
        while self._pending:
            change = self._pending.popleft()
            if change is _RESYNC:
                for watch in list(self._watches):
                    try:
                        await self._resync(watch)
                    except Exception:
                        log.exception("store watcher %r could not be resynchronised", watch.handler)
                continue
            for listener in list(self._listeners):
                try:
                    result = listener(change)
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    log.exception(
                        "store listener %r failed on %s (revision %d)", listener, change.key, change.revision
                    )

    async def _stop_delivery(self) -> None:
        """For ``close()``: cancel a running delivery; undelivered changes are dropped."""
        task, self._delivery = self._delivery, None
        self._pending.clear()
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
