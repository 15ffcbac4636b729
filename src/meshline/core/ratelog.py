"""Warnings that an attacker can trigger, logged at most once per interval per kind.

A flood of refused calls or connections must not turn into a flood of log lines (or of
tracebacks): the first of a kind is logged at once, the rest of the interval are counted
and summed up in the next line of that kind.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

DEFAULT_INTERVAL_S = 10.0
# Distinct kinds remembered; an attacker choosing kinds cannot grow this past it.
MAX_KINDS = 256


class RateLimitedLog:
    def __init__(
        self,
        logger: logging.Logger,
        interval: float = DEFAULT_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, kind: str, msg: str, *args: object) -> bool:
        """Log ``msg % args`` unless a line of ``kind`` went out less than ``interval`` ago
        (then count it). Returns whether it was logged."""
        now = self.clock()
        last = self._last.get(kind)
        if last is not None and now - last < self.interval:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return False
        if last is None and len(self._last) >= MAX_KINDS:
            self._forget_oldest()
        self._last[kind] = now
        more = self._suppressed.pop(kind, 0)
        if more:
            msg += " (and %d more like it in the last %.0fs)"
            args = (*args, more, now - (last or now))
        self.logger.warning(msg, *args)
        return True

    def _forget_oldest(self) -> None:
        oldest = min(self._last, key=self._last.__getitem__)
        del self._last[oldest]
        self._suppressed.pop(oldest, None)
