"""The store interface every backend implements, and its change-event model.

Versions: every write gets the next value of one store-wide, monotonically increasing
revision; a resource's ``version`` is the revision of its last write. An update or
delete that names an ``expected_version`` other than the stored one is refused with
:class:`~meshline.core.errors.Conflict` (optimistic concurrency: a stale write is
refused, never lost).

Change events: :meth:`Store.subscribe` delivers every committed write, including
writes made by other control-plane replicas on a shared backend, in revision order,
each change to every listener before the next change goes to any. A listener may run
after the write that caused it has returned (always so for other replicas' writes, and
for a write made while a delivery is already running, e.g. by a listener). A listener
that raises is logged and does not fail the write or stop delivery to the others.
"""

from __future__ import annotations

import abc
import asyncio
import builtins
import contextlib
import inspect
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from meshline.core.resource import KindRegistry, Resource, ResourceKey

log = logging.getLogger("meshline.store")


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


class Store(abc.ABC):
    """Async resource store. Implementations must pass ``tests/store/conformance.py``."""

    def __init__(self, kinds: KindRegistry) -> None:
        self.kinds = kinds
        self._listeners: list[Listener] = []
        self._pending: deque[Change] = deque()  # committed, not yet delivered, in revision order
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

    async def put(self, resource: Resource, expected_version: int | None = None) -> Resource:
        """Create or update (what ``meshline apply`` does)."""
        from meshline.core.errors import NotFound

        try:
            return await self.update(resource, expected_version)
        except NotFound:
            if expected_version:
                raise
            return await self.create(resource)

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
