"""``python -m benchmarks.multizone_propagation [--zones 3] [--size 1000] [--rounds 5]``: how long a
change applied at global takes to be ACKed by simulated dataplanes in every zone, next to the
same change applied to one standalone control plane with the same dataplanes.

Each control plane runs as a user runs it (``meshline control-plane``, SQLite, tokens, xDS over
TLS); each zone gets ``size`` simulated dataplanes (benchmarks/adssim, one simulator process per
zone) seeded in its store, the topology of the cp-scale benchmark. The change is an HTTPRoute on
the hub service every dataplane reaches (RDS only). Propagation: from just before the API write
until the last affected dataplane ACKed, in any zone.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import stats
from benchmarks.controlplane.harness import ControlPlaneUnderTest, seed_store
from benchmarks.controlplane.scale import services_for
from benchmarks.controlplane.topology import HUB, Topology, mesh_doc, route_for
from benchmarks.mesh import start_control_plane
from benchmarks.procs import ProcessGroup

QUIET = 1.0  # seconds without a push that end a measurement


def _wait(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:  # retried until the deadline
            pass
        time.sleep(0.2)
    raise TimeoutError(f"timed out waiting for {what}")


def _measure(apply: Any, sims: list[Any], expected: int, rounds: int) -> dict[str, float]:
    latencies: list[float] = []
    for r in range(1, rounds + 1):
        for sim in sims:
            sim.mark()
        began = time.monotonic()
        apply(r)
        for sim in sims:
            got = sim.collect(began, expect=expected, quiet=QUIET, timeout=120)
            assert not got["timed_out"], got
            latencies += [float(x) for x in got["latencies"]]
    d = stats.distribution(latencies)
    return {k: d[k] for k in ("p50", "p99", "max")}


def single(procs: ProcessGroup, work: Path, topo: Topology, rounds: int) -> dict[str, float]:
    cut = ControlPlaneUnderTest(procs, work / "single", topo)
    cut.seed()
    cut.start()
    cut.wait_idle()
    cut.connect(timeout=max(60.0, topo.dataplanes / 50))
    try:
        return _measure(lambda r: cut.api.apply(route_for(HUB, r)), [cut.sim], len(topo.reaching(HUB)), rounds)
    finally:
        assert cut.sim is not None
        cut.sim.quit()
        cut.stop()


def multi(procs: ProcessGroup, work: Path, topo: Topology, zones: int, rounds: int) -> dict[str, float]:
    seed_store(work / "global", [mesh_doc()])
    glob = start_control_plane(procs, work / "global", name="global", env={"MESHLINE_MODE": "global",
                                                                           "MESHLINE_ZONE": "global"})  # fmt: skip
    cuts = []
    for i in range(zones):
        name = f"zone-{i + 1}"
        token = glob.request("POST", "/api/v1/tokens", {"kind": "zone", "zone": name})["token"]
        path = work / f"{name}.token"
        path.write_text(token)
        cut = ControlPlaneUnderTest(procs, work / name, topo, env={
            "MESHLINE_MODE": "zone", "MESHLINE_ZONE": name, "MESHLINE_GLOBAL": glob.api_url,
            "MESHLINE_ZONE_TOKEN_FILE": str(path)})  # fmt: skip
        cut.seed()
        cut.start()
        cuts.append(cut)
    for cut in cuts:
        _wait(lambda cut=cut: cut.api.request("GET", "/api/v1/zones")["items"][0]["connected"], 60, "zones connected")
        cut.wait_idle()
        cut.connect(timeout=max(60.0, topo.dataplanes / 50))
    try:
        return _measure(lambda r: glob.apply(route_for(HUB, r)), [c.sim for c in cuts], len(topo.reaching(HUB)), rounds)
    finally:
        for cut in cuts:
            if cut.sim is not None:
                cut.sim.quit()
            cut.stop()


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.multizone_propagation")
    p.add_argument("--zones", type=int, default=3)
    p.add_argument("--size", type=int, default=1000, help="simulated dataplanes per zone")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    topo = Topology(args.size, services_for(args.size, 10))
    with tempfile.TemporaryDirectory() as tmp_name:
        work = Path(tmp_name)
        procs = ProcessGroup(work / "logs-single")  # a group per phase: a stopped process ends its group
        try:
            one = single(procs, work, topo, args.rounds)
        finally:
            procs.close()
        procs = ProcessGroup(work / "logs-zones")
        try:
            many = multi(procs, work, topo, args.zones, args.rounds)
        finally:
            procs.close()
    print(f"route change on the hub, {args.size} simulated dataplanes per control plane, {args.rounds} rounds")
    print(f"{'':<36} {'p50':>8} {'p99':>8} {'max':>8}")
    print(f"{'one standalone control plane':<36} {one['p50']:>7.3f}s {one['p99']:>7.3f}s {one['max']:>7.3f}s")
    label = f"global -> {args.zones} zones"
    print(f"{label:<36} {many['p50']:>7.3f}s {many['p99']:>7.3f}s {many['max']:>7.3f}s")
    print(f"{'difference (p99)':<36} {'':>8} {many['p99'] - one['p99']:>7.3f}s")


if __name__ == "__main__":
    main(sys.argv[1:])
