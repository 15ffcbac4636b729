"""Requests the mesh refused, or a dry-run TrafficPermission would have refused: what
`meshline permissions report` shows, grouped by the policy that decided.

Counted from the callee's side (its inbound entry knows the deciding RBAC policy: the
``x-meshline-denied`` header of an enforced denial, Envoy's ``shadow_effective_policy_id``
of a dry-run one), so each request counts once. Bounded: at most ``keys`` (policy, mode,
caller, callee, method, path) rows per mesh, the least recently updated going first; a row
not updated for ``ttl_s`` (an hour) is dropped when read.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from meshline.telemetry.record import INBOUND, LogRecord

ENFORCED = "enforced"
DRY_RUN = "dry-run"


@dataclass(frozen=True)
class DenialLimits:
    keys: int = 10_000
    ttl_s: float = 3600.0


@dataclass(frozen=True)
class DenialKey:
    policy: str
    mode: str  # enforced | dry-run
    source: str
    destination: str
    method: str
    path: str


@dataclass
class DenialCount:
    count: int = 0
    first_seen: float = 0.0
    last_seen: float = 0.0


def denial_of(r: LogRecord) -> DenialKey | None:
    """The row an inbound entry counts in, if it was (or would have been) refused."""
    if r.direction != INBOUND:
        return None
    path = r.path.split("?", 1)[0]
    if r.denied:
        policy = r.details.removeprefix("rbac_access_denied_matched_policy[").rstrip("]")
        return DenialKey(policy or "?", ENFORCED, r.source, r.destination, r.method, path)
    if r.shadow_denied_by:
        return DenialKey(r.shadow_denied_by, DRY_RUN, r.source, r.destination, r.method, path)
    return None


class Denials:
    def __init__(self, limits: DenialLimits | None = None) -> None:
        self.limits = limits or DenialLimits()
        self.rows: OrderedDict[DenialKey, DenialCount] = OrderedDict()
        self.evicted = 0

    def add(self, key: DenialKey, at: float) -> None:
        row = self.rows.pop(key, None) or DenialCount(first_seen=at)
        self.rows[key] = row
        row.count += 1
        row.first_seen = min(row.first_seen, at)
        row.last_seen = max(row.last_seen, at)
        while len(self.rows) > self.limits.keys:
            self.rows.popitem(last=False)
            self.evicted += 1

    def since(self, now: float, seconds: float) -> list[tuple[DenialKey, DenialCount]]:
        """Rows seen in the last ``seconds`` (at most the ttl); counts are totals of each row's life."""
        horizon = now - min(seconds, self.limits.ttl_s)
        for k in [k for k, c in self.rows.items() if c.last_seen < now - self.limits.ttl_s]:
            del self.rows[k]
        return [(k, c) for k, c in self.rows.items() if c.last_seen >= horizon]
