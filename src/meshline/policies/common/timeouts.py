"""What a policy that sets the request timeout shows other kinds' checks (Retry's per-try
timeout must fit in it), without them importing its package."""

from __future__ import annotations

from datetime import timedelta
from typing import Protocol, runtime_checkable


@runtime_checkable
class SetsRequestTimeout(Protocol):
    def request_timeout(self) -> timedelta | None:
        """The HTTP request timeout this policy sets (None: it leaves the default)."""
        ...
