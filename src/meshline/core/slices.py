"""Long work on the event loop in slices: a handler gives the loop back every few milliseconds,
so one big request (a mesh's stats, a batch of access-log entries) never holds up the others."""

from __future__ import annotations

import asyncio
import time

SLICE_S = 0.002


class Slices:
    def __init__(self, every: float | None = None) -> None:
        self.every = SLICE_S if every is None else every
        self.since = time.perf_counter()

    def due(self) -> bool:
        return time.perf_counter() - self.since >= self.every

    async def pause(self) -> None:
        """Let every other ready task run, then start a new slice."""
        await asyncio.sleep(0)
        self.since = time.perf_counter()

    async def tick(self) -> None:
        if self.due():
            await self.pause()
