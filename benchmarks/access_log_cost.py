"""``python -m benchmarks.access_log_cost [--rounds 7] [--seconds 2]``: what a sidecar's per-request
loggers cost Envoy, in microseconds of its CPU per request.

One Envoy per variant (``--concurrency 1``, pinned to CPU 0), each an HTTP listener answering
200 itself (no upstream: the figure is the connection manager's work per request), with the
access loggers an outbound sidecar section gets, built by Meshline's own render functions:

* ``none``: no logger (the floor);
* ``stats``: the per-request stats loggers (render/metrics.py: requests, latency, sizes, paths);
* ``stats+stream``: those plus the stream filter of the default ``logging.successes: 1`` (what is
  kept: failures, watched, sampled...) on a file logger to /dev/null. The filter is what every
  request pays; the 1% of entries it keeps are written, as a gRPC logger would batch them.

wrk (one thread, 16 keep-alive connections, pinned to CPU 1) saturates each Envoy in turn;
rounds are interleaved and each figure is the median over rounds. 1e6 / requests per second is
the Envoy CPU per request (the one core it has is busy the whole run).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2
from google.protobuf import json_format

from benchmarks import tools
from benchmarks.loadgen import wrk
from meshline.render import envoy as render_envoy
from meshline.render import metrics
from meshline.telemetry import envoy_config
from meshline.testing.servers import free_port

VARIANTS = ("none", "stats", "stats+stream")


def loggers(variant: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if variant in ("stats", "stats+stream"):
        caller = ({"service": "web", "version": "v1"},)
        out += [json_format.MessageToDict(log) for log in metrics.outbound_logger("outbound_x", "default", caller, "orders", "http")]
    if variant == "stats+stream":
        log = accesslog_pb2.AccessLog(name="envoy.access_loggers.file", filter=envoy_config.stream_filter(1.0),
                                      typed_config=render_envoy.packed(file_pb2.FileAccessLog(path="/dev/null")))  # fmt: skip
        out.append(json_format.MessageToDict(log))
    return out


def bootstrap(variant: str, port: int, admin: Path) -> dict[str, Any]:
    hcm = {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
           "statPrefix": "x", "accessLog": loggers(variant),
           "routeConfig": {"virtualHosts": [{"name": "all", "domains": ["*"], "routes": [
               {"match": {"prefix": "/"}, "directResponse": {"status": 200, "body": {"inlineString": "ok\n"}}}]}]},
           "httpFilters": [{"name": "envoy.filters.http.router",
                            "typedConfig": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}  # fmt: skip
    listener = {"name": "outbound_x", "address": {"socketAddress": {"address": "127.0.0.1", "portValue": port}},
                "filterChains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typedConfig": hcm}]}]}  # fmt: skip
    return {"admin": {"address": {"pipe": {"path": str(admin)}}}, "staticResources": {"listeners": [listener]}}


def _pinned(cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu)] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else []


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--seconds", type=int, default=2)
    args = p.parse_args(argv)
    envoy = tools.envoy_path() or tools.require("envoy")
    tools.require("wrk")
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="ml-alog-") as tmp:
        ports = {}
        try:
            for i, variant in enumerate(VARIANTS):
                port = free_port()
                path = Path(tmp) / f"{i}.json"
                path.write_text(json.dumps(bootstrap(variant, port, Path(tmp) / f"{i}.admin")))
                procs.append(subprocess.Popen([*_pinned(0), envoy, "-c", str(path), "--concurrency", "1",
                                               "--disable-hot-restart", "-l", "error", "--base-id", str(900 + i)],
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))  # fmt: skip
                ports[variant] = port
            deadline = time.monotonic() + 30
            while not all((Path(tmp) / f"{i}.admin").exists() for i in range(len(VARIANTS))):
                if time.monotonic() > deadline or any(pr.poll() is not None for pr in procs):
                    raise SystemExit("an Envoy did not start (envoy --mode validate on its config says why)")
                time.sleep(0.1)
            samples: dict[str, list[float]] = {v: [] for v in VARIANTS}
            wrk_cmd = _pinned(1)
            for r in range(args.rounds):
                for variant in VARIANTS:
                    url = f"http://127.0.0.1:{ports[variant]}/"
                    if wrk_cmd:
                        done = subprocess.run([*wrk_cmd, tools.require("wrk"), "-t1", "-c16", f"-d{args.seconds}s", url],
                                              capture_output=True, text=True, timeout=args.seconds + 60)  # fmt: skip
                        rps = wrk.parse(done.stdout).rps
                    else:
                        rps = wrk.run(url, seconds=args.seconds).rps
                    samples[variant].append(rps)
                print(f"round {r + 1}: " + ", ".join(f"{v} {samples[v][-1]:,.0f} req/s" for v in VARIANTS), flush=True)
        finally:
            for pr in procs:
                pr.terminate()
                pr.wait(10)
    floor = 1e6 / statistics.median(samples["none"])
    print("\n| loggers | req/s (median) | Envoy CPU per request | over none |\n|---|---:|---:|---:|")
    for variant in VARIANTS:
        us = 1e6 / statistics.median(samples[variant])
        print(f"| {variant} | {statistics.median(samples[variant]):,.0f} | {us:.1f} us | +{us - floor:.1f} us |")


if __name__ == "__main__":
    main()
