"""Which HTTP methods and paths each edge (caller -> callee) used: what `permissions suggest
--l7` turns into rules.

Bounded, because paths come from outside (a caller may send a million distinct ones):

* at most ``per_edge`` (method, path) entries per edge: past it, the edge's paths are
  collapsed into their parent prefixes (``/items/1``, ``/items/2`` ... become ``/items/``),
  the deepest and most numerous first, so what is kept degrades into fewer, wider prefixes
  and never into a forgotten path;
* at most ``edges`` edges per mesh (the least recently updated goes first);
* an entry not seen for ``ttl_s`` (an hour) is dropped the next time its edge is updated or read.

Each entry is a count and a last-seen time (about 200 bytes with its path), so a mesh holds at
most ``edges * per_edge`` of them: 128,000 by default, about 25 MB.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from meshline.telemetry.record import LogRecord


@dataclass(frozen=True)
class EdgePathLimits:
    per_edge: int = 64
    edges: int = 2_000
    ttl_s: float = 3600.0


@dataclass
class PathSeen:
    count: int = 0
    last_seen: float = 0.0


@dataclass(frozen=True)
class PathKey:
    method: str
    path: str  # without its query string
    prefix: bool = False  # a collapsed entry: every path starting with ``path``


@dataclass
class _Edge:
    paths: dict[PathKey, PathSeen] = field(default_factory=dict)


def parent_prefix(path: str) -> str:
    """``/a/b/c`` -> ``/a/b/``; ``/a/b/`` -> ``/a/``; ``/`` stays ``/``."""
    trimmed = path[:-1] if path.endswith("/") else path
    cut = trimmed.rfind("/")
    return trimmed[: cut + 1] if cut >= 0 else "/"


def covers(key: PathKey, method: str, path: str) -> bool:
    return key.method == method and (path.startswith(key.path) if key.prefix else path == key.path)


class EdgePaths:
    def __init__(self, limits: EdgePathLimits | None = None) -> None:
        self.limits = limits or EdgePathLimits()
        self.edges: OrderedDict[tuple[str, str], _Edge] = OrderedDict()  # least recently updated first
        self.collapsed = 0  # collapses done to stay within per_edge

    def add(self, r: LogRecord) -> None:
        path = r.path.split("?", 1)[0] or "/"
        edge = self.edges.pop(r.edge, None) or _Edge()
        self.edges[r.edge] = edge
        key = next((k for k in edge.paths if k.prefix and covers(k, r.method, path)), None)
        key = key or PathKey(r.method, path)
        seen = edge.paths.setdefault(key, PathSeen())
        seen.count += 1
        seen.last_seen = max(seen.last_seen, r.time)
        self._expire(edge, r.time)
        while len(edge.paths) > self.limits.per_edge:
            self._collapse(edge)
        while len(self.edges) > self.limits.edges:
            self.edges.popitem(last=False)

    def _expire(self, edge: _Edge, now: float) -> None:
        for k in [k for k, s in edge.paths.items() if s.last_seen < now - self.limits.ttl_s]:
            del edge.paths[k]

    def _collapse(self, edge: _Edge) -> None:
        """Merge the deepest group of siblings (same method, same parent) into their parent prefix."""
        groups: dict[PathKey, list[PathKey]] = {}
        for k in edge.paths:
            parent = PathKey(k.method, parent_prefix(k.path), prefix=True)
            if parent != k:
                groups.setdefault(parent, []).append(k)
        if not groups:  # only root prefixes left (one per method): drop the least recently seen
            del edge.paths[min(edge.paths, key=lambda k: edge.paths[k].last_seen)]
            return
        parent, members = max(groups.items(), key=lambda kv: (kv[0].path.count("/"), len(kv[1]), kv[0].path))
        merged = edge.paths.pop(parent, None) or PathSeen()
        for k in members:
            s = edge.paths.pop(k)
            merged.count += s.count
            merged.last_seen = max(merged.last_seen, s.last_seen)
        # Entries under the new prefix that were not its direct children are covered by it too.
        for k in [k for k in edge.paths if covers(parent, k.method, k.path)]:
            s = edge.paths.pop(k)
            merged.count += s.count
            merged.last_seen = max(merged.last_seen, s.last_seen)
        edge.paths[parent] = merged
        self.collapsed += 1

    def of(self, edge: tuple[str, str], now: float, since_s: float) -> dict[PathKey, PathSeen]:
        """The edge's entries seen within the last ``since_s`` seconds (and the ttl)."""
        e = self.edges.get(edge)
        if e is None:
            return {}
        horizon = now - min(since_s, self.limits.ttl_s)
        return {k: PathSeen(s.count, s.last_seen) for k, s in e.paths.items() if s.last_seen >= horizon}

    def size(self) -> int:
        return sum(len(e.paths) for e in self.edges.values())
