"""TrafficPermissions that allow exactly what the mesh observed (pure: observations in, YAML out).

Input: the edges the telemetry intake counted (caller -> callee, requests, denied, last seen)
and, with ``l7``, the methods and paths each edge used. Output: one ``allow`` per observed
edge, named ``<prefix><caller>-to-<callee>``, and one ``deny`` of everything else
(``<prefix>deny-unobserved``: every caller to every service, the least specific permission
there is, so any allow beats it and it beats only the mesh default). Applied, the set lets
through what was seen and nothing more, whatever the mesh default is; applied with
``mode: dry-run`` it refuses nothing and the callee sidecars record what it would refuse
(`meshline permissions report`).

Paths (``l7``): several paths under one parent (``/items/1``, ``/items/2``, ``/items/3``) are
collapsed into its prefix (``/items/``) when at least ``collapse_at`` share it; the root ``/``
is never a collapse target (it would allow everything). Each rule lists the methods seen on it.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from meshline.core.schema import NAME_RE

EXTERNAL = "external"  # telemetry's source of a caller without a sidecar (no identity to allow)


@dataclass(frozen=True)
class Edge:
    source: str
    destination: str
    requests: int
    denied: int
    last_seen: float
    protocol: str = "http"


@dataclass(frozen=True)
class SeenPath:
    method: str
    path: str
    prefix: bool
    requests: int
    last_seen: float


@dataclass
class Rule:
    path: str
    prefix: bool
    methods: set[str] = field(default_factory=set)
    requests: int = 0
    last_seen: float = 0.0


def _parent(path: str) -> str:
    trimmed = path[:-1] if path.endswith("/") else path
    return trimmed[: trimmed.rfind("/") + 1] or "/"


def collapse(paths: Iterable[SeenPath], collapse_at: int = 3) -> list[Rule]:
    """Rules (a path or prefix, its methods) covering every path seen, siblings collapsed."""
    rules: dict[tuple[str, bool], Rule] = {}
    for p in paths:
        r = rules.setdefault((p.path, p.prefix), Rule(p.path, p.prefix))
        r.methods.add(p.method)
        r.requests += p.requests
        r.last_seen = max(r.last_seen, p.last_seen)
    while True:
        groups: dict[str, list[tuple[str, bool]]] = {}
        for key in rules:
            parent = _parent(key[0])
            if parent != "/" and (parent, True) != key:
                groups.setdefault(parent, []).append(key)
        ready = [(parent, keys) for parent, keys in groups.items() if len(keys) >= collapse_at]
        if not ready:
            break
        parent, _ = max(ready, key=lambda g: (g[0].count("/"), len(g[1]), g[0]))
        merged = rules.pop((parent, True), None) or Rule(parent, True)
        for key in [k for k in rules if k[0].startswith(parent)]:
            r = rules.pop(key)
            merged.methods |= r.methods
            merged.requests += r.requests
            merged.last_seen = max(merged.last_seen, r.last_seen)
        rules[(parent, True)] = merged
    return sorted(rules.values(), key=lambda r: (r.path, r.prefix))


def _when(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def policy_name(prefix: str, source: str, destination: str) -> str:
    name = f"{prefix}{source}-to-{destination}"
    return name if NAME_RE.match(name) else f"{prefix}{abs(hash((source, destination))) % 10**8}"


@dataclass
class Suggestion:
    """The documents, and per document the comment lines to print above it (and per rule)."""

    docs: list[dict[str, Any]]
    comments: list[list[str]]
    rule_comments: list[list[str]]
    skipped: list[str]


def suggest(
    mesh: str,
    edges: Sequence[Edge],
    paths: Mapping[tuple[str, str], Sequence[SeenPath]] | None = None,
    *,
    mode: str = "enforce",
    name_prefix: str = "learned-",
    collapse_at: int = 3,
    include_denied: bool = False,
    deny_rest: bool = True,
) -> Suggestion:
    """``deny_rest`` false: the allows alone (adding a missing rule to a set already enforced)."""
    out = Suggestion([], [], [], [])
    for e in sorted(edges, key=lambda e: (e.destination, e.source)):
        allowed = e.requests - e.denied
        if e.source in ("", EXTERNAL):
            out.skipped.append(
                f"{e.requests} request(s) to {e.destination} from callers without a mesh identity (no sidecar):"
                " applying this file refuses them (learned-deny-unobserved); a permission from service '*'"
                f" to {e.destination} would let them in, and every other caller too"
            )
            continue
        if allowed <= 0 and not include_denied:
            out.skipped.append(
                f"{e.source} -> {e.destination}: {e.requests} request(s), all refused by the mesh; not allowed"
                " (add --include-denied to allow it; `meshline permissions report` shows the refusals)"
            )
            continue
        spec: dict[str, Any] = {
            "sources": [{"match": {"service": e.source}}],
            "destinations": [{"match": {"service": e.destination}}],
            "action": "allow",
        }
        if mode != "enforce":
            spec["mode"] = mode
        rule_notes: list[str] = []
        seen = list((paths or {}).get((e.source, e.destination), ()))
        if paths is not None and e.protocol == "http" and seen:
            rules = []
            for r in collapse(seen, collapse_at):
                match = {"prefix": r.path} if r.prefix else {"exact": r.path}
                rules.append({"paths": [match], "methods": sorted(r.methods)})
                rule_notes.append(f"{r.requests} request(s), last seen {_when(r.last_seen)}")
            spec["rules"] = rules
        out.docs.append({"kind": "TrafficPermission", "mesh": mesh,
                         "name": policy_name(name_prefix, e.source, e.destination), "spec": spec})
        note = f"{e.source} -> {e.destination}: {e.requests} request(s), last seen {_when(e.last_seen)}"
        if e.denied:
            note += f"; {e.denied} of them refused by the mesh"
        out.comments.append([note])
        out.rule_comments.append(rule_notes)
    if not deny_rest or not out.docs:
        return out  # nothing observed to allow: a deny of the rest alone would refuse everything
    deny: dict[str, Any] = {"sources": [{"match": {"service": "*"}}], "destinations": [{"match": {"service": "*"}}],
                            "action": "deny"}
    if mode != "enforce":
        deny["mode"] = mode
    out.docs.append({"kind": "TrafficPermission", "mesh": mesh, "name": f"{name_prefix}deny-unobserved", "spec": deny})
    out.comments.append(["everything not allowed above (the least specific permission: every allow beats it)"])
    out.rule_comments.append([])
    return out


def to_yaml(s: Suggestion, header: Sequence[str]) -> str:
    """The documents as one YAML stream, each with its comments (and each rule with its own)."""
    parts = ["".join(f"# {line}\n" for line in header)]
    for doc, notes, rule_notes in zip(s.docs, s.comments, s.rule_comments, strict=True):
        text = yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=200)
        if rule_notes:
            lines, i = [], 0
            for line in text.splitlines():
                if line.lstrip().startswith("- paths:") and i < len(rule_notes):
                    lines.append(" " * (len(line) - len(line.lstrip())) + f"# {rule_notes[i]}")
                    i += 1
                lines.append(line)
            text = "\n".join(lines) + "\n"
        parts.append("---\n" + "".join(f"# {n}\n" for n in notes) + text)
    for line in s.skipped:
        parts.append(f"# skipped: {line}\n")
    return "".join(parts)
