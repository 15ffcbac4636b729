"""The contract between rendering and the rate-limit service: what a descriptor carries.

Render puts the limit itself into each descriptor, as the entry
``meshline_limit = <requests>/<window>/<algorithm>`` (e.g. ``200/1s/fixed``). The
service counts whatever it is asked about under a key made of all entries, so:

* what Envoy was configured with is exactly what is enforced (no second copy of the
  policies that could lag behind an xDS push);
* several control-plane replicas answer alike without sharing anything but Redis;
* changing a policy's limit starts a fresh counter.

What a descriptor may say is not up to the caller, though: the service counts only
descriptors of the shape a RateLimit policy of the caller's mesh makes its sidecars send
(:class:`Shape`, derived by ``policies.ratelimit.plugin.global_shapes``), for the caller's
own service; anything else is refused before Redis is touched, so a caller cannot create
counters (Redis keys) of its choosing or drain another service's limit.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
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
ANY_CALLER = "*"  # source_service of the rule for every caller a policy does not name

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


@dataclass(frozen=True)
class Shape:
    """The descriptors one global RateLimit policy makes sidecars send, entry by entry:
    ``meshline_policy``, ``destination_service``, ``source_service``, then ``header_<name>``
    and ``path`` when the policy counts per header / per path (each left out when the request
    has none), and ``meshline_limit`` last."""

    policy: str
    destinations: frozenset[str] | None  # services its destinations select; None: any
    sources: frozenset[str]  # source_service values: named callers, ANY_CALLER for the rest
    limit: str  # Limit.encode()
    per_header: str | None = None
    per_path: bool = False

    def problem(self, entries: Sequence[tuple[str, str]], service: str | None) -> str | None:
        """Why ``entries`` are not a descriptor of this shape for a caller of ``service``
        (None: any service, an admin or mesh credential); None when they are."""
        optional = ([HEADER_KEY_PREFIX + self.per_header] if self.per_header else []) + (
            [PATH_KEY] if self.per_path else []
        )
        keys = [k for k, _ in entries]
        inner = keys[3:-1]
        head_ok = keys[:3] == [POLICY_KEY, DESTINATION_KEY, SOURCE_KEY] and keys[-1:] == [LIMIT_KEY]
        if not head_ok or inner != [k for k in optional if k in inner]:
            return f"its entries ({', '.join(keys)}) are not those RateLimit '{self.policy}' sends"
        values = dict(entries)
        destination = values[DESTINATION_KEY]
        if service is not None and destination != service:
            return f"it counts for service '{destination}', not the caller's own '{service}'"
        if self.destinations is not None and destination not in self.destinations:
            return f"RateLimit '{self.policy}' does not apply to service '{destination}'"
        if values[SOURCE_KEY] not in self.sources:
            return f"RateLimit '{self.policy}' has no rule for caller '{values[SOURCE_KEY]}'"
        if values[LIMIT_KEY] != self.limit:
            return f"RateLimit '{self.policy}' limits to {self.limit}, not {values[LIMIT_KEY]}"
        return None
