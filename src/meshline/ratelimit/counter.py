"""Window counters in Redis: one Lua script per algorithm, so each hit is atomic and one round trip.

Windows are aligned to Redis' clock (``TIME`` inside the script), not to the caller's,
so control-plane replicas on hosts whose clocks differ still share windows.

* ``fixed``: one counter per window (INCRBY, then PEXPIRE when the window's first hit
  creates it). Requests over the limit are counted too; that changes nothing, as the
  window's count only has to say "over".
* ``sliding``: the usual sliding-window counter approximation: the previous window's
  count weighted by how much of it still overlaps the last ``window`` ms, plus the
  current one. Only allowed requests are counted, so a client that keeps knocking while
  limited is not also punished in the next window.

The scripts build their keys from ``KEYS[1]`` (the window start is known only inside
the script); the keys share a ``{hash tag}`` but Redis Cluster is not supported:
use a standalone Redis (or Sentinel).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from meshline.xds.rls_descriptor import Limit

KEY_PREFIX = "meshline:rl"

_FIXED = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local hits = tonumber(ARGV[3])
local start = now - (now % window)
local key = KEYS[1] .. ':' .. start
local used = redis.call('INCRBY', key, hits)
if used == hits then redis.call('PEXPIRE', key, window + 1000) end
local allowed = 0
if used <= limit then allowed = 1 end
return {allowed, used, start + window - now}
"""

_SLIDING = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local hits = tonumber(ARGV[3])
local start = now - (now % window)
local current = KEYS[1] .. ':' .. start
local previous = KEYS[1] .. ':' .. (start - window)
local before = tonumber(redis.call('GET', previous) or '0')
local used = tonumber(redis.call('GET', current) or '0')
local weighted = before * (window - (now - start)) / window
if weighted + used + hits > limit then
  return {0, math.floor(weighted + used), start + window - now}
end
used = redis.call('INCRBY', current, hits)
if used == hits then redis.call('PEXPIRE', current, 2 * window + 1000) end
return {1, math.floor(weighted + used), start + window - now}
"""


@dataclass(frozen=True)
class Count:
    allowed: bool
    used: int  # hits counted in the window, including this one when allowed
    remaining: int
    reset_ms: int  # until the current window ends


def counter_key(domain: str, entries: Sequence[tuple[str, str]]) -> str:
    """Redis key (without window) for one descriptor: readable domain, hashed entries.

    Entries may hold long or odd values (paths, header values), hence the digest.
    """
    h = hashlib.sha256(domain.encode())
    for key, value in entries:
        h.update(b"\0" + key.encode() + b"\0" + value.encode())
    return f"{KEY_PREFIX}:{domain}:{{{h.hexdigest()[:32]}}}"


class WindowCounter:
    """Counts hits against a :class:`Limit` in Redis (a ``redis.asyncio.Redis``)."""

    def __init__(self, redis: Any) -> None:
        self._scripts = {
            "fixed": redis.register_script(_FIXED),
            "sliding": redis.register_script(_SLIDING),
        }

    async def hit(self, key: str, limit: Limit, hits: int = 1) -> Count:
        script = self._scripts[limit.algorithm]
        allowed, used, reset_ms = await script(keys=[key], args=[limit.window_ms, limit.requests, hits])
        used = int(used)
        return Count(bool(allowed), used, max(0, limit.requests - used), max(0, int(reset_ms)))
