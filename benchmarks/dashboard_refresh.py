"""``python -m benchmarks.dashboard_refresh [--services N] [--refreshes R]``: the control
plane's CPU for one data refresh of each dashboard page (what a browser tab costs it every 2 s).

A control plane runs in this process (``ControlPlaneThread``: SQLite store, token auth, as
``meshline control-plane`` runs), seeded through its API with N services (default 200) of two
instances each, every service calling the next two, a Timeout policy, and an hour of
telemetry (one request per edge per 10 s bucket, fed to its intake as the access-log service
would). A child process then plays one browser tab: the requests each page makes per refresh
(the same paths app.js asks for, with the admin token), R times (default 50). The figure is
this process's CPU time (every thread of the control plane: loop, store workers, gRPC) over
those refreshes, divided by R; the child's own CPU (HTTP client, JSON parsing) is not in it.
Median of 3 rounds per page.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from meshline.controlplane.settings import Settings
from meshline.telemetry.record import LogRecord
from meshline.testing.mesh import ControlPlaneThread
from meshline.testing.servers import free_port

INSPECT_EVERY = 5  # service.js reloads its instances' and callers' policies every 5th refresh


def pages(services: int) -> dict[str, list[list[str]]]:
    """Per page, the requests of each refresh in a cycle of INSPECT_EVERY refreshes."""
    m = "/api/v1/meshes/default"
    svc = f"svc-{services // 2:03d}"
    every = [f"{m}/services/{svc}/dataplanes", f"{m}/stats?window=1m&service={svc}", f"{m}/services/{svc}/series?span=15m",
             f"{m}/failures?service={svc}&limit=20"]
    inspects = [f"{m}/dataplanes/{svc}-{i}/inspect?config=0" for i in (1, 2)] + [
        f"{m}/dataplanes/svc-{services // 2 - k:03d}-1/inspect?config=0" for k in (1, 2)]
    return {
        "overview": [[f"{m}/dataplanes", f"{m}/stats?window=1m"]],
        "service": [every + inspects] + [every] * (INSPECT_EVERY - 1),
        "service (1 h charts)": [[p.replace("span=15m", "span=1h") for p in every]],
        "dataplane": [[f"{m}/dataplanes/{svc}-1/inspect?config=0"]],
        "policy": [[f"{m}/timeouts/slow-calls", f"{m}/policies/Timeout/slow-calls/dataplanes",
                    f"{m}/policies/Timeout/slow-calls/outranked"]],
        "policies list": [[f"{m}/{plural}" for plural in ("httproutes", "tcproutes", "timeouts", "retries",
                                                         "circuitbreakers", "healthchecks", "loadbalancers",
                                                         "faultinjections", "ratelimits", "trafficpermissions")]],
    }


CLIENT = """
import json, sys, httpx
url, token, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
cycle = json.loads(sys.stdin.read())
with httpx.Client(base_url=url, headers={"Authorization": "Bearer " + token}, timeout=30) as c:
    for i in range(rounds):
        for path in cycle[i % len(cycle)]:
            r = c.get(path)
            assert r.status_code == 200, (path, r.status_code, r.text[:300])
            r.json()
"""


def seed(url: str, token: str, services: int) -> None:
    docs: list[dict[str, Any]] = []
    for i in range(services):
        for n in (1, 2):
            docs.append({"kind": "Dataplane", "mesh": "default", "name": f"svc-{i:03d}-{n}", "spec": {
                "address": f"127.0.{n}.{i % 250 + 1}",
                "inbound": [{"port": 20000 + i, "servicePort": 30000 + i,
                             "tags": {"service": f"svc-{i:03d}", "version": f"v{n}", "protocol": "http"}}],
                "outbound": [{"port": 40000 + j, "service": f"svc-{j % services:03d}"} for j in (i + 1, i + 2)]}})
    docs.append({"kind": "Timeout", "mesh": "default", "name": "slow-calls",
                 "spec": {"destinations": [{"match": {"service": "*"}}], "conf": {"http": {"requestTimeout": "5s"}}}})
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120) as c:
        r = c.post("/api/v1/apply", json={"resources": docs})
        r.raise_for_status()


def settle(url: str, token: str) -> None:
    """Until the reconciler has rendered everything seeded (its work is not the pages')."""
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as c:
        for _ in range(1200):
            sync = c.get("/api/v1/meshes/default/sync").json()
            if sync["settledRevision"] >= sync["revision"] and all(d["versions"] for d in sync["dataplanes"]):
                return
            time.sleep(0.1)
    raise TimeoutError("the control plane did not finish rendering the seeded mesh")


def feed_telemetry(cp: ControlPlaneThread, services: int) -> None:
    """An hour of traffic: one request per edge per 10 s bucket (a failure every 50th)."""
    now = time.time()
    for start in range(0, 3600, 600):  # ten minutes of buckets per call, so the loop is not held long
        batch = [
            LogRecord(time=now - 3600 + t, mesh="default", dataplane=f"svc-{i:03d}-1", direction="outbound",
                      source=f"svc-{i:03d}", destination=f"svc-{(i + k) % services:03d}", destination_version="v1",
                      method="GET", path="/", status=503 if (t + i) % 500 == 0 else 200, duration_ms=1.0 + (t % 37),
                      request_id=f"r-{i}-{k}-{t}")
            for t in range(start, start + 600, 10) for i in range(services) for k in (1, 2)
        ]
        cp.call(lambda b=batch: cp.cp.ctx.services["telemetry"].ingest(b))


def measure(cp: ControlPlaneThread, url: str, token: str, cycle: list[list[str]], refreshes: int) -> float:
    """Control-plane CPU ms per refresh while a child process makes ``refreshes`` of them."""
    import json

    before = time.process_time()
    done = subprocess.run([sys.executable, "-c", CLIENT, url, token, str(refreshes)], input=json.dumps(cycle),
                          text=True, capture_output=True, timeout=600)
    spent = time.process_time() - before
    if done.returncode != 0:
        raise RuntimeError(f"the client failed: {done.stderr[-2000:]}")
    return spent * 1000 / refreshes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=200)
    parser.add_argument("--refreshes", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        settings = Settings(data_dir=data, store_url=f"sqlite:///{data / 'meshline.db'}", auth=True,
                            api_address=f"127.0.0.1:{free_port()}", xds_address=f"127.0.0.1:{free_port()}")
        cp = ControlPlaneThread(settings)
        cp.start()
        try:
            url = cp.cp.api_url
            token = (data / "admin.token").read_text().strip()
            seed(url, token, args.services)
            settle(url, token)
            feed_telemetry(cp, args.services)
            sizes = cp.call(lambda: cp.cp.ctx.services["telemetry"].sizes("default"))
            print(f"{args.services} services, {2 * args.services} dataplanes; telemetry: {sizes['seriesKeys']} series,"
                  f" {sizes['seriesCells']} cells, {sizes['records']} records")
            print(f"control-plane CPU per page refresh (ms, median of {args.rounds} rounds of {args.refreshes}):")
            for name, cycle in pages(args.services).items():
                figures = [measure(cp, url, token, cycle, args.refreshes) for _ in range(args.rounds)]
                requests = sum(len(c) for c in cycle) / len(cycle)
                print(f"  {name:22s} {statistics.median(figures):6.2f} ms  ({requests:.1f} requests;"
                      f" rounds {', '.join(f'{f:.2f}' for f in figures)})")
        finally:
            cp.stop()


if __name__ == "__main__":
    main()
