"""`meshline get zones`: each zone's link with global (at global: every zone; at a zone: its own)."""

from __future__ import annotations

import json
import time
from typing import Any

from meshline.api.client import ApiClient
from meshline.cli.output import echo, table

ZONE_NAMES = ("zone", "zones")


def _ago(ts: float | None) -> str:
    if not ts:
        return "never"
    s = max(0, int(time.time() - ts))
    return f"{s}s ago" if s < 120 else f"{s // 60}m ago"


def get_zones(c: ApiClient, output: str) -> None:
    data: dict[str, Any] = dict(c.get("/api/v1/zones"))
    items = list(data.get("items") or [])
    if output in ("json", "yaml"):
        echo(json.dumps(items, indent=2))
        return
    if not items:
        echo("No zones have connected yet.")
        return
    rows = []
    for z in items:
        behind = z.get("versionsBehind")
        rows.append([
            z["name"], "yes" if z.get("connected") else "no", _ago(z.get("lastSync")),
            "-" if behind is None else str(behind), str(z.get("appliedRevision", "")),
            str(z.get("services", "")) if data.get("mode") == "global" else z.get("global", ""),
            "; ".join(z.get("errors") or []) or "-",
        ])  # fmt: skip
    last = "SERVICES" if data.get("mode") == "global" else "GLOBAL"
    table(["ZONE", "CONNECTED", "LAST SYNC", "BEHIND", "APPLIED", last, "ERRORS"], rows)
