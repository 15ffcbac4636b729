"""Waiting and stopping without Python 3.11's ``asyncio.wait_for`` race.

On 3.11, ``wait_for(event.wait(), t)`` returns normally when the event is set at the moment
the waiting task is cancelled: the cancellation is lost, a ``while True`` loop goes on, and
whoever awaits the cancelled task waits for ever (a zone's sync loop hung a control plane's
stop that way). ``asyncio.timeout`` does not lose it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable


async def wait_set(event: asyncio.Event, timeout: float) -> bool:
    """Whether ``event`` was set within ``timeout`` seconds; a cancellation always propagates."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()
    return event.is_set()


async def stop_tasks(tasks: Iterable[asyncio.Task[object]], every: float = 1.0) -> None:
    """Cancel ``tasks`` and wait until each has ended, cancelling again any that swallowed it."""
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=every)
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: an error at stop is not "never retrieved" noise
