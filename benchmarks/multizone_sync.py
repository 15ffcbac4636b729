"""``python -m benchmarks.multizone_sync [N ...]``: what one change costs the multi-zone sync.

A global and one zone control plane in this process (SQLite, tokens on, HTTP on loopback, the
zone's long poll at 20 s as by default). For a mesh of N policies (default 100, 1,000, 5,000) at
global, it changes one policy ten times and registers ten dataplanes in the zone, and prints per
change the bytes that crossed (down: the batch global answered; up: the zone's batch) and the time
from the write to its arrival on the other side (global's apply returning -> the zone's store
holding it; the zone's registration -> global's store holding the ZoneService). The claim it
checks: bytes per change do not grow with N.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from meshline.controlplane.settings import Settings
from meshline.server.controlplane import ControlPlane
from meshline.server.factory import build_control_plane
from meshline.store.base import Change

ROUNDS = 10


def _settings(path: Path, **kw: Any) -> Settings:
    path.mkdir(parents=True, exist_ok=True)
    return Settings(data_dir=path, store_url=f"sqlite:///{path / 'meshline.db'}", api_address="127.0.0.1:0",
                    xds_address="127.0.0.1:0", auth=True, debounce=0.005, **kw)  # fmt: skip


def _timeout(i: int, seconds: int = 2) -> dict[str, Any]:
    return {"kind": "Timeout", "mesh": "default", "name": f"t{i}",
            "spec": {"destinations": [{"match": {"service": f"svc-{i}"}}], "conf": {"connectTimeout": f"{seconds}s"}}}  # fmt: skip


def _arrival(cp: ControlPlane, want: Callable[[Change], bool]) -> asyncio.Future[float]:
    fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    def on(change: Change) -> None:
        if want(change) and not fut.done():
            fut.set_result(time.perf_counter())
            unsubscribe()

    unsubscribe = cp.store.subscribe(on)
    return fut


class Sizes:
    """The bytes of each sync request and answer, by direction (httpx event hooks on the zone's client)."""

    def __init__(self) -> None:
        self.down: list[int] = []
        self.up: list[int] = []
        self.report: list[int] = []  # the rollout report's deltas (ACKs, renders)

    async def response(self, r: httpx.Response) -> None:
        await r.aread()
        if "/sync/down" in r.request.url.path:
            body = json.loads(r.content)
            if body.get("put") or body.get("delete"):
                self.down.append(len(r.content))
        elif "/sync/up" in r.request.url.path:
            body = json.loads(r.request.content)
            if body.get("put") or body.get("delete"):  # the inventory part of the batch
                self.up.append(len(json.dumps({"put": body["put"], "delete": body["delete"]})))
            if body.get("meshes"):
                self.report.append(len(json.dumps(body["meshes"])))


async def run(n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        glob = build_control_plane(_settings(tmp / "global", mode="global", zone="global"))
        await glob.start()
        admin = (tmp / "global" / "admin.token").read_text().strip()
        api = httpx.AsyncClient(base_url=glob.api_url, headers={"Authorization": f"Bearer {admin}"}, timeout=60)
        docs = [_timeout(i) for i in range(n)]
        for chunk in range(0, n, 1000):
            (await api.post("/api/v1/apply", json={"resources": docs[chunk:chunk + 1000]})).raise_for_status()
        r = await api.post("/api/v1/tokens", json={"kind": "zone", "zone": "zone-a"})
        (tmp / "zone.token").write_text(r.json()["token"])
        zone = build_control_plane(_settings(tmp / "zone-a", mode="zone", zone="zone-a", global_url=glob.api_url,
                                             zone_token_file=tmp / "zone.token", create_default_mesh=False))  # fmt: skip
        first = _arrival(zone, lambda c: c.key.name == f"t{n - 1}")
        started = time.perf_counter()
        await zone.start()
        initial = await first - started
        sizes = Sizes()
        sync = zone.ctx.services.get("zone_sync")
        client = getattr(sync, "_client", None)
        assert isinstance(client, httpx.AsyncClient)
        client.event_hooks["response"].append(sizes.response)
        zapi = httpx.AsyncClient(base_url=zone.api_url, timeout=30, headers={
            "Authorization": f"Bearer {(tmp / 'zone-a' / 'admin.token').read_text().strip()}"})  # fmt: skip
        down, up = [], []
        try:
            for k in range(ROUNDS):
                name = f"t{k}"
                arrived = _arrival(zone, lambda c, name=name: c.key.name == name)  # type: ignore[misc]
                t0 = time.perf_counter()
                (await api.post("/api/v1/apply", json={"resources": [_timeout(k, 3 + k)]})).raise_for_status()
                down.append(await asyncio.wait_for(arrived, 60) - t0)
                service = f"new-{k}"
                at_global = _arrival(glob, lambda c, s=service: c.key.kind == "ZoneService" and c.resource is not None
                                     and getattr(c.resource.spec, "service", "") == s)  # fmt: skip
                t0 = time.perf_counter()
                dp = {"kind": "Dataplane", "mesh": "default", "name": f"dp-{k}", "spec": {"address": "127.0.0.9",
                      "inbound": [{"port": 7000 + k, "servicePort": 8000 + k, "tags": {"service": service}}]}}  # fmt: skip
                (await zapi.post("/api/v1/apply", json={"resources": [dp]})).raise_for_status()
                up.append(await asyncio.wait_for(at_global, 60) - t0)
        finally:
            await zapi.aclose()
            await api.aclose()
            await zone.stop()
            await glob.stop()
        return {"policies": n, "initial_sync_s": initial, "down_bytes": statistics.median(sizes.down or [0]),
                "up_bytes": statistics.median(sizes.up or [0]), "report_bytes": max(sizes.report or [0]),
                "down_ms": [d * 1000 for d in down],
                "up_ms": [u * 1000 for u in up]}  # fmt: skip


def main(argv: list[str]) -> None:
    sizes = [int(a) for a in argv] or [100, 1000, 5000]
    print("policies  initial sync  down bytes/change  down p50/max ms  up bytes/change  up p50/max ms"
          "  report bytes (max)")
    for n in sizes:
        r = asyncio.run(run(n))
        print(f"{r['policies']:>8}  {r['initial_sync_s']:>10.2f}s  {r['down_bytes']:>17.0f}  "
              f"{statistics.median(r['down_ms']):>6.1f} / {max(r['down_ms']):>5.1f}  {r['up_bytes']:>15.0f}  "
              f"{statistics.median(r['up_ms']):>6.1f} / {max(r['up_ms']):>5.1f}  {r['report_bytes']:>18}")  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1:])
