"""A steady, bounded load client for end-to-end tests: requests at a fixed pace through a
sidecar, every one counted with its outcome (the instance that answered, or the error)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import httpx

RATE_HZ = 100  # one request every 10 ms
MAX_SECONDS = 120  # the loop ends by itself after this, whatever happens


@dataclass
class PacedLoad:
    """Requests at a fixed pace (GET ``url``, an :class:`~meshline.testing.servers.HttpTestServer`
    behind it), each with its outcome and time."""

    url: str
    rate_hz: int = RATE_HZ
    outcomes: list[tuple[float, str]] = field(default_factory=list)  # (time, instance name | error)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> PacedLoad:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        deadline = time.monotonic() + MAX_SECONDS
        with httpx.Client(timeout=2) as client:
            next_at = time.monotonic()
            while not self._stop.is_set() and time.monotonic() < deadline:
                sent = time.monotonic()
                try:
                    r = client.get(self.url)
                    what = r.json()["instance"] if r.status_code == 200 else f"HTTP {r.status_code}: {r.text[:100]}"
                except (httpx.HTTPError, ValueError, KeyError) as err:
                    what = type(err).__name__
                self.outcomes.append((sent, what))
                next_at += 1 / self.rate_hz
                time.sleep(max(0.0, next_at - time.monotonic()))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def since(self, t: float) -> list[tuple[float, str]]:
        return [(at, what) for at, what in self.outcomes if at >= t]

    def failed(self, prefix: str) -> list[tuple[float, str]]:
        """The requests not answered by an instance whose name starts with ``prefix``."""
        return [(at, what) for at, what in self.outcomes if not what.startswith(prefix)]
