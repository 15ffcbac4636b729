"""``python -m benchmarks.recording_off [--rounds 3] [--seconds 6] [--rate 400]``: what a
TrafficRecording costs while it records, and that recording off costs nothing.

A control plane in this process and two real sidecars on loopback (strict mTLS): the open-loop
generator (benchmarks/loadgen/openloop.c, fixed rate, latency from the intended send time)
calls web's outbound -> orders' inbound -> nginx. Modes, interleaved per round: ``off`` (no
recording), ``on`` (a TrafficRecording of orders, every request, 16 KiB bodies), ``off-after``
(the recording deleted again). The figure per mode is the median over rounds. Off is checked
to be the same Envoy configuration as before any recording (no Lua filter on the inbound), so
what remains of a difference between ``off`` and ``off-after`` is the machine's noise.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks import tools
from benchmarks.loadgen import openloop
from meshline.testing.mesh import MeshHarness, Sidecar, wait_until
from meshline.testing.servers import free_port

NGINX_CONF = """
daemon off; master_process off; worker_processes 1; error_log {dir}/error.log; pid {dir}/nginx.pid;
events {{ worker_connections 1024; }}
http {{ access_log off; client_body_temp_path {dir}; proxy_temp_path {dir}; fastcgi_temp_path {dir};
        uwsgi_temp_path {dir}; scgi_temp_path {dir};
        server {{ listen 127.0.0.1:{port}; location / {{ return 200 "ok\\n"; }} }} }}
"""


def listeners(sc: Sidecar) -> list[Any]:
    """The sidecar's listeners as Envoy runs them, without versions and timestamps."""
    dump = json.loads(sc.admin("/config_dump?resource=dynamic_listeners").text)
    return sorted((c["active_state"]["listener"] for c in dump["configs"] if "active_state" in c),
                  key=lambda x: str(x.get("name")))


def has_lua(sc: Sidecar) -> bool:
    return "envoy.filters.http.lua" in sc.admin("/config_dump?resource=dynamic_listeners").text


def measure(url: str, rate: float, seconds: float) -> dict[str, float]:
    res = openloop.run(url, openloop.OpenLoopSettings(rate=rate, seconds=seconds, warmup=1.0, connections=8))
    lat = res.latency
    return {"p50_ms": lat["p50"], "p90_ms": lat["p90"], "p99_ms": lat["p99"], "errors": res.errors,
            "rate": res.achieved_rate}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--rate", type=float, default=400.0)
    args = p.parse_args(argv)
    nginx = tools.require("nginx")
    tmp = Path(tempfile.mkdtemp(prefix="rec-off-"))
    port = free_port()
    (tmp / "nginx.conf").write_text(NGINX_CONF.format(dir=tmp, port=port))
    origin = subprocess.Popen([nginx, "-c", str(tmp / "nginx.conf"), "-p", str(tmp)])
    samples: dict[str, list[dict[str, float]]] = {"off": [], "on": [], "off-after": []}
    try:
        with MeshHarness(tmp / "mesh", mtls="strict") as h:
            h.apply([{"kind": "TrafficPermission", "mesh": "default", "name": "all", "spec": {"action": "allow"}}])
            orders = h.sidecar("orders", app_port=port)
            web = h.sidecar("web", app_port=free_port(), upstreams=["orders"])
            url = web.url("orders") + "/"
            wait_until(lambda: httpx.get(url, timeout=5).status_code == 200, 20, what="web -> orders")
            before = listeners(orders)
            same = True
            for _ in range(args.rounds):
                assert not has_lua(orders)
                samples["off"].append(measure(url, args.rate, args.seconds))
                h.apply([{"kind": "TrafficRecording", "mesh": "default", "name": "bench", "spec": {
                    "destinations": [{"match": {"service": "orders"}}], "until": time.time() + 600}}])
                wait_until(lambda: has_lua(orders), 20, what="the recording's filter")
                samples["on"].append(measure(url, args.rate, args.seconds))
                h.api.request("DELETE", "/api/v1/meshes/default/trafficrecordings/bench")
                wait_until(lambda: not has_lua(orders), 20, what="the filter to go")
                same = same and listeners(orders) == before
                samples["off-after"].append(measure(url, args.rate, args.seconds))
    finally:
        origin.terminate()
        origin.wait(10)
    load = os.getloadavg()[0]
    print(f"## {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC — recording off vs on"
          f" (loaded machine: load average {load:.1f} on {os.cpu_count()} cores)\n")
    print(f"{args.rate:g} req/s open loop, 8 connections, {args.seconds:g} s per round (1 s warm-up),"
          f" {args.rounds} rounds interleaved; web -> orders over mTLS to nginx; medians over rounds.\n")
    print("| mode | p50 ms | p90 ms | p99 ms | errors |")
    print("|---|---|---|---|---|")
    for mode, rows in samples.items():
        med: dict[str, Any] = {k: statistics.median(r[k] for r in rows) for k in ("p50_ms", "p90_ms", "p99_ms")}
        errors = sum(int(r["errors"]) for r in rows)
        print(f"| {mode} | {med['p50_ms']:.3f} | {med['p90_ms']:.3f} | {med['p99_ms']:.3f} | {errors} |")
    print(f"\norders' listeners after each recording identical to before any: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
