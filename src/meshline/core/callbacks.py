"""Callbacks registered under a key, each with its own cancel: who watches a node's snapshot,
which streams end when a token is revoked."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

F = TypeVar("F", bound=Callable[..., object])


class KeyedCallbacks(Generic[F]):
    def __init__(self) -> None:
        self._by_key: dict[str, set[F]] = {}

    def add(self, key: str, fn: F) -> Callable[[], None]:
        """Register ``fn`` under ``key``; the returned function unregisters it (idempotent)."""
        self._by_key.setdefault(key, set()).add(fn)

        def cancel() -> None:
            fns = self._by_key.get(key)
            if fns is not None:
                fns.discard(fn)
                if not fns:
                    del self._by_key[key]

        return cancel

    def get(self, key: str) -> list[F]:
        """The callbacks under ``key`` (a copy: calling them may register or cancel others)."""
        return list(self._by_key.get(key, ()))

    def pop(self, key: str) -> list[F]:
        """The callbacks under ``key``, unregistered."""
        return list(self._by_key.pop(key, ()))

    def __contains__(self, key: str) -> bool:
        return key in self._by_key
