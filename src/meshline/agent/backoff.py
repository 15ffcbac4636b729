"""Retry timing as pure objects: no clock, no sleeping, so the rules are tested directly."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Exponential backoff for restarting something that keeps dying.

    ``initial`` doubling up to ``cap``; a run that lasted at least ``stable_after``
    seconds counts as healthy, so the next failure starts again from ``initial``.
    """

    initial: float = 0.5
    factor: float = 2.0
    cap: float = 10.0
    stable_after: float = 60.0
    _next: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        self._next = self.initial

    def failed(self, ran_for: float) -> float:
        """Record a failure after running ``ran_for`` seconds; return the delay before the retry."""
        if ran_for >= self.stable_after:
            self._next = self.initial
        delay = self._next
        self._next = min(self._next * self.factor, self.cap)
        return delay

    def reset(self) -> None:
        self._next = self.initial


@dataclass
class Deadline:
    """Retries spaced by a :class:`Backoff` until ``timeout`` seconds have passed since ``start``."""

    start: float
    timeout: float
    backoff: Backoff = field(default_factory=lambda: Backoff(initial=0.25, cap=2.0))

    def elapsed(self, now: float) -> float:
        return max(0.0, now - self.start)

    def remaining(self, now: float) -> float:
        return max(0.0, self.timeout - self.elapsed(now))

    def next_delay(self, now: float) -> float | None:
        """Seconds to wait before the next attempt, or None when time is up.

        The last wait is shortened so the final attempt happens right at the deadline.
        """
        left = self.remaining(now)
        if left <= 0:
            return None
        return min(self.backoff.failed(0.0), left)
