"""`meshline apply --wait`: return once every dataplane whose configuration the apply changed
has ACKed it, or say which did not and why.

Pure parts (:func:`affected`, :func:`pending_reason`) work on the JSON of
``GET /api/v1/meshes/{mesh}/sync``; :func:`wait_for_acks` polls it."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Sync = dict[str, Any]
POLL = 0.1


def _by_name(sync: Sync) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for d in sync.get("dataplanes", [])}


def affected(before: Sync, after: Sync) -> list[str]:
    """Dataplanes whose rendered versions (or render error) changed between two polls."""
    old = _by_name(before)
    out = []
    for name, dp in _by_name(after).items():
        prior = old.get(name)
        if prior is None or prior["versions"] != dp["versions"] or (dp.get("renderError") and
                                                                    dp.get("renderError") != prior.get("renderError")):
            out.append(name)
    return out


def pending_reason(dp: dict[str, Any]) -> str | None:
    """Why ``dp`` does not run its current versions yet (None: it has ACKed them all)."""
    if dp.get("renderError"):
        return f"its configuration cannot be rendered: {dp['renderError']}"
    state = dp.get("state")
    if state == "offline":
        return "offline: its sidecar is not connected to this control plane"
    nack = dp.get("lastNack")
    if state == "rejected" and nack:
        return f"rejected (NACK) version {nack['version']}: {nack['message']}"
    acked: dict[str, str] = dp.get("acked", {})
    behind = [t for t, v in dp.get("versions", {}).items() if t in acked and acked[t] != v]
    if not acked or behind:
        return "has not ACKed " + (", ".join(behind) if behind else "its configuration") + " yet"
    return None


@dataclass
class WaitResult:
    dataplanes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    not_acked: dict[str, str] = field(default_factory=dict)  # name -> why
    settled: bool = True


def wait_for_acks(
    fetch: Callable[[str], Sync],
    before: dict[str, Sync],
    revision: int,
    timeout: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    started: float | None = None,
) -> WaitResult:
    """Poll each mesh of ``before`` until its rendering has reached ``revision`` and every
    affected dataplane has ACKed, or ``timeout`` passes."""
    start = clock() if started is None else started
    while True:
        syncs = {mesh: fetch(mesh) for mesh in before}
        settled = all(s["settledRevision"] >= revision for s in syncs.values())
        result = WaitResult(settled=settled)
        if settled:
            for mesh, sync in syncs.items():
                by_name = _by_name(sync)
                for name in affected(before[mesh], sync):
                    label = name if len(before) == 1 else f"{mesh}/{name}"
                    result.dataplanes.append(label)
                    why = pending_reason(by_name[name])
                    if why is not None:
                        result.not_acked[label] = why
        result.seconds = clock() - start
        if settled and not result.not_acked:
            return result
        if result.seconds >= timeout:
            return result
        sleep(POLL)
