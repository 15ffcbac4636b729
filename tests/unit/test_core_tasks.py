"""Waiting for an event and stopping tasks lose no cancellation (Python 3.11's wait_for can)."""

from __future__ import annotations

import asyncio
import contextlib
import sys

import pytest

from meshline.core.tasks import stop_tasks, wait_set


async def _loop(ev: asyncio.Event, wait: object) -> None:
    while True:  # the shape of the sync loops: wait for a wake-up or a heartbeat, go on
        if wait is asyncio.wait_for:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ev.wait(), 10)
        else:
            await wait_set(ev, 10)
        ev.clear()


async def _cancel_as_it_wakes(wait: object) -> bool:
    """Set the event and cancel the loop in the same turn; whether the loop ended."""
    ev = asyncio.Event()
    task = asyncio.create_task(_loop(ev, wait))
    await asyncio.sleep(0.01)
    ev.set()
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=0.5)
    if not done:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return bool(done)


async def test_a_cancel_that_races_a_wake_up_is_not_lost() -> None:
    assert await _cancel_as_it_wakes(wait_set)
    if sys.version_info < (3, 12):  # the bug this module exists for
        assert not await _cancel_as_it_wakes(asyncio.wait_for)


async def test_wait_set_says_whether_the_event_came() -> None:
    ev = asyncio.Event()
    assert not await wait_set(ev, 0.01)
    ev.set()
    assert await wait_set(ev, 10)


async def test_stop_tasks_cancels_again_a_task_that_swallowed_one_cancel() -> None:
    async def stubborn() -> None:
        with contextlib.suppress(asyncio.CancelledError):  # swallowed once, as a racing wait_for does
            await asyncio.sleep(10)
        await asyncio.sleep(10)

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0.01)
    await asyncio.wait_for(stop_tasks([task], every=0.05), 5)
    assert task.cancelled()


async def test_stop_tasks_retrieves_a_failure_at_stop() -> None:
    async def fails() -> None:
        raise RuntimeError("boom")

    task = asyncio.create_task(fails())
    await asyncio.sleep(0)
    await stop_tasks([task])
    with pytest.raises(RuntimeError):
        task.result()
