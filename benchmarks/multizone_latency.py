"""``python -m benchmarks.multizone_latency [REQUESTS]``: what a zone ingress adds to a call.

As root (network namespaces, see meshline.testing.zonemesh): global, zone A and zone B, each
control plane on its own host, zone B's ingress on another. ``web`` in zone A calls ``near``
(zone A, another host: sidecar -> sidecar, mTLS) and ``far`` (only in zone B: sidecar -> B's
ingress -> sidecar, mTLS end to end). Sequential keep-alive GETs from web's host, in interleaved
rounds; prints p50 / p90 / p99 per path and the difference.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
from pathlib import Path

from meshline.testing.mesh import wait_until
from meshline.testing.netns import TestNetwork
from meshline.testing.zonemesh import ZoneWorld, http_app

CLIENT = """
import http.client, json, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
out = []
for _ in range(n):
    t = time.perf_counter()
    conn.request("GET", "/")
    r = conn.getresponse(); r.read()
    out.append((time.perf_counter() - t) * 1000 if r.status == 200 else -1)
print(json.dumps(out))
"""
ALLOW = """
kind: TrafficPermission
mesh: default
name: web-to-all
spec:
  sources: [{match: {service: web}}]
  destinations: [{match: {service: '*'}}]
  action: allow
"""


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


def main(argv: list[str]) -> None:
    n = int(argv[0]) if argv else 500
    rounds = 5
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        net = TestNetwork(tmp / "net")
        world = ZoneWorld(net, tmp)
        try:
            world.start()
            a, b = world.zone("zone-a", ingress=False), world.zone("zone-b")
            world.wait_mesh(a)
            world.apply(ALLOW)
            world.run(a, net.host("near"), "near", 8080, http_app("near-1", 8080))
            world.run(b, net.host("far"), "far", 8080, http_app("far-1", 8080))
            wa = net.host("wa")
            world.run(a, wa, "web", 8080, http_app("web-1", 8080), upstreams=["near=9001", "far=9002"])
            for port in (9001, 9002):
                wait_until(lambda port=port: wa.curl(f"http://127.0.0.1:{port}/")[0] == 200, 60, interval=0.3,  # type: ignore[misc]
                           what=f"web to reach port {port}")  # fmt: skip
            got: dict[str, list[float]] = {"near": [], "far": []}
            for _ in range(rounds):
                for name, port in (("near", 9001), ("far", 9002)):
                    done = wa.run([sys.executable, "-c", CLIENT, str(port), str(n)], timeout=600)
                    values = json.loads(done.stdout)
                    assert all(v >= 0 for v in values), f"{name}: failed requests"
                    got[name].extend(values[10:])  # the first few warm the connection
            print(f"{'path':<40} {'p50':>8} {'p90':>8} {'p99':>8}  (ms, {rounds} x {n} sequential requests)")
            labels = {"near": "same zone, across hosts (2 sidecars)", "far": "across zones via B's ingress"}
            for name, values in got.items():
                print(f"{labels[name]:<40} {pct(values, 50):>8.3f} {pct(values, 90):>8.3f} {pct(values, 99):>8.3f}")
            print(f"{'added by the zone ingress (p50)':<40} {pct(got['far'], 50) - pct(got['near'], 50):>8.3f}"
                  f"   mean {statistics.mean(got['far']) - statistics.mean(got['near']):.3f}")  # fmt: skip
        finally:
            try:
                world.stop()
            finally:
                net.close()


if __name__ == "__main__":
    main(sys.argv[1:])
