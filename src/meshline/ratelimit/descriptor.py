"""The contract between rendering and the rate-limit service: what a descriptor carries.

Render puts the limit itself into each descriptor, as the entry
``meshline_limit = <requests>/<window>/<algorithm>`` (e.g. ``200/1s/fixed``). The
service counts whatever it is asked about under a key made of all entries, so:

* what Envoy was configured with is exactly what is enforced (no second copy of the
  policies that could lag behind an xDS push);
* several control-plane replicas answer alike without sharing anything but Redis;
* changing a policy's limit starts a fresh counter.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from envoy.service.ratelimit.v3 import rls_pb2

LIMIT_KEY = "meshline_limit"
POLICY_KEY = "meshline_policy"
DESTINATION_KEY = "destination_service"
SOURCE_KEY = "source_service"
PATH_KEY = "path"
HEADER_KEY_PREFIX = "header_"

Algorithm = Literal["fixed", "sliding"]
ALGORITHMS: tuple[str, ...] = ("fixed", "sliding")

_Unit = rls_pb2.RateLimitResponse.RateLimit
# Envoy reports a limit as "N per unit" (x-ratelimit-limit's window), so a window is one unit.
WINDOWS: dict[str, tuple[int, int]] = {
    "1s": (1, _Unit.SECOND),
    "1m": (60, _Unit.MINUTE),
    "1h": (3600, _Unit.HOUR),
    "1d": (86400, _Unit.DAY),
}
_NAME_OF_SECONDS = {seconds: name for name, (seconds, _) in WINDOWS.items()}


@dataclass(frozen=True)
class Limit:
    requests: int
    window_s: int  # one of WINDOWS' seconds
    algorithm: str = "fixed"

    @property
    def window_ms(self) -> int:
        return self.window_s * 1000

    @property
    def unit(self) -> int:
        return WINDOWS[_NAME_OF_SECONDS[self.window_s]][1]

    def encode(self) -> str:
        return f"{self.requests}/{_NAME_OF_SECONDS[self.window_s]}/{self.algorithm}"

    @classmethod
    def decode(cls, text: str) -> Limit | None:
        """The limit in a descriptor entry, or None if it is not one this service wrote."""
        parts = text.split("/")
        if len(parts) != 3 or not parts[0].isdigit() or parts[1] not in WINDOWS or parts[2] not in ALGORITHMS:
            return None
        requests = int(parts[0])
        if requests < 1:
            return None
        return cls(requests, WINDOWS[parts[1]][0], parts[2])

    @classmethod
    def find(cls, entries: Iterable[tuple[str, str]]) -> Limit | None:
        for key, value in entries:
            if key == LIMIT_KEY:
                return cls.decode(value)
        return None


def window_name(seconds: int) -> str | None:
    """``1s``/``1m``/``1h``/``1d`` for a supported window length, else None."""
    return _NAME_OF_SECONDS.get(seconds)
