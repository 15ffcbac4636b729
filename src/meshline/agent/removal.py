"""Wait, bounded, until every caller's sidecar has ACKed a config without this instance
(``GET .../dataplanes/{name}/removal``, see ``meshline.controlplane.removal``). The agent does
it on stop between deregistering and draining; ``meshline drain`` does it for operators."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from meshline.core.errors import MeshlineError

POLL = 0.05  # seconds between asks: ACKs land within milliseconds of a push


@dataclass
class RemovalResult:
    done: bool = False
    seconds: float = 0.0
    pending: dict[str, str] = field(default_factory=dict)  # caller -> why it may still send here
    offline: list[str] = field(default_factory=list)
    error: str | None = None  # the last failed ask, if the control plane could not answer

    def summary(self) -> str:
        if self.done:
            extra = f"; offline, not waited for: {', '.join(self.offline)}" if self.offline else ""
            return f"every caller ACKed a config without this instance in {self.seconds:.2f}s{extra}"
        if self.error and not self.pending:
            return f"could not learn whether callers dropped this instance ({self.error}); waited {self.seconds:.1f}s"
        whys = "; ".join(f"{name}: {why}" for name, why in sorted(self.pending.items()))
        return f"callers had not all dropped this instance after {self.seconds:.1f}s ({whys})"


async def wait_removed(
    ask: Callable[[], Awaitable[Any]], timeout: float, *, clock: Callable[[], float] = time.monotonic
) -> RemovalResult:
    """Ask until the answer says done or ``timeout`` passes (a failed ask is retried)."""
    start = clock()
    result = RemovalResult()
    while True:
        try:
            answer = await asyncio.wait_for(ask(), max(0.5, timeout - (clock() - start)))
            result.error = None
            result.pending = dict(answer.get("pending", {}))
            result.offline = list(answer.get("offline", []))
            result.done = bool(answer.get("done"))
        except (MeshlineError, TimeoutError) as err:
            result.error = str(err) or "no answer in time"
        result.seconds = clock() - start
        if result.done or result.seconds >= timeout:
            return result
        await asyncio.sleep(POLL)
