"""Control plane at scale, against simulated dataplanes: propagation, churn, memory, reconnect storm.

One session per mesh size (e.g. 1,000 and 5,000 dataplanes), each with its own control plane:

1. seed the store with the :class:`Topology`, start ``meshline control-plane``, connect the
   simulator (every dataplane with its service's token, over TLS) and wait until all are synced;
   memory before and after the streams connect;
2. ``rounds`` times each: a route change for ``hub`` (every dataplane reaches it: RDS
   only), a route change for one ordinary service (only its callers may be pushed: counted),
   a new service every dataplane reaches (CDS, EDS, LDS, RDS all change) and its removal.
   Propagation = from just before the API write until the last affected dataplane ACKed;
3. (one size) endpoint churn: instance changes at a fixed rate in a background thread for a
   while, with a hub route change every few seconds as a probe of how far behind pushes are;
4. reconnect storm: the control plane is restarted; every stream reconnects with Envoy's
   backoff; time until all are synced again, and whether any config changed (it must not:
   versions are content hashes, so a dataplane keeps what it runs).
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks import measure, mesh, stats
from benchmarks.adssim.control import Simulator
from benchmarks.controlplane.harness import ControlPlaneUnderTest
from benchmarks.controlplane.topology import FRESH, HUB, MESH, Topology, fresh_instance, route_for
from benchmarks.procs import ProcessError, ProcessGroup, free_port
from benchmarks.profile import profiling

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ScaleSettings:
    sizes: tuple[int, ...]  # dataplanes per session
    rounds: int  # changes of each kind per session
    quiet: float  # seconds without pushes that end a measurement
    churn_size: int  # the session that also runs churn (0: none)
    churn_rate: float  # instance changes per second
    churn_seconds: float
    probe_every: float  # seconds between probes during churn
    services_per: int = 10  # dataplanes per service
    profile_dir: Path | None = None  # py-spy the control plane during changes and the storm
    cp_source: Path | None = None  # run the control plane from this source tree (before/after comparisons)

    def cp_env(self) -> dict[str, str]:
        return {"PYTHONPATH": str(self.cp_source)} if self.cp_source else {}


def services_for(dataplanes: int, per: int) -> int:
    return max(10, dataplanes // per)


@dataclass
class ChangeStats:
    """Propagation of one kind of change over several rounds."""

    latencies: list[float] = field(default_factory=list)  # every affected dataplane, every round
    round_p99: list[float] = field(default_factory=list)
    pushed: list[int] = field(default_factory=list)
    expected: list[int] = field(default_factory=list)
    by_type: dict[str, int] = field(default_factory=dict)
    cpu_seconds: list[float] = field(default_factory=list)  # control plane CPU per change
    sim_cpu_seconds: list[float] = field(default_factory=list)  # the simulator's, same window
    unexpected: int = 0  # dataplanes pushed that do not reach what changed
    timed_out: int = 0

    def add(self, result: dict[str, Any], expected: set[int], cpu: float, sim_cpu: float) -> None:
        lat = [float(x) for x in result["latencies"]]
        self.latencies += lat
        self.round_p99.append(stats.distribution(lat)["p99"] if lat else float("nan"))  # per round
        self.pushed.append(int(result["pushed"]))
        self.expected.append(len(expected))
        self.unexpected += len(set(result["nodes"]) - expected)
        for key, n in result["by_type"].items():
            self.by_type[key] = self.by_type.get(key, 0) + int(n)
        self.cpu_seconds.append(cpu)
        self.sim_cpu_seconds.append(sim_cpu)
        self.timed_out += bool(result["timed_out"])

    def figures(self, prefix: str) -> dict[str, float]:
        d = stats.distribution(self.latencies)
        out = {f"{prefix}.{k}_s": d[k] for k in ("p50", "p90", "p99", "max")}
        out[f"{prefix}.pushed"] = float(max(self.pushed, default=0))
        out[f"{prefix}.expected"] = float(max(self.expected, default=0))
        out[f"{prefix}.extra_pushes"] = float(self.unexpected)
        out[f"{prefix}.cpu_s"] = statistics.median(self.cpu_seconds) if self.cpu_seconds else 0.0
        out[f"{prefix}.sim_cpu_s"] = statistics.median(self.sim_cpu_seconds) if self.sim_cpu_seconds else 0.0
        out[f"{prefix}.timed_out"] = float(self.timed_out)
        if len(self.round_p99) > 1:  # a first change may push more types than the next ones
            out[f"{prefix}.first_round_p99_s"] = self.round_p99[0]
            out[f"{prefix}.later_rounds_p99_s"] = max(self.round_p99[1:])
        rounds = max(1, len(self.pushed))
        for key, n in self.by_type.items():
            out[f"{prefix}.pushes_per_round.{key}"] = n / rounds
        return out


class Session:
    """One control plane with ``size`` simulated dataplanes."""

    def __init__(self, procs: ProcessGroup, workdir: Path, size: int, settings: ScaleSettings) -> None:
        self.settings = settings
        self.topology = Topology(size, services_for(size, settings.services_per))
        self.cut = ControlPlaneUnderTest(procs, workdir, self.topology, env=settings.cp_env())
        self.figures: dict[str, float] = {}
        self.details: dict[str, Any] = {"dataplanes": size, "services": self.topology.services}

    @property
    def sim(self) -> Any:
        assert self.cut.sim is not None
        return self.cut.sim

    def close(self) -> None:
        """Stop the simulator and the control plane (the process group goes on to other sessions)."""
        procs = self.cut.procs
        if self.cut.sim is not None:
            self.cut.sim.quit()
            procs.stop(self.cut.sim.pid)
            self.cut.sim = None
        if self.cut.cp is not None:
            self.cut.stop()

    def start(self) -> None:
        f, cut = self.figures, self.cut
        f["seed_s"] = cut.seed()
        f["ready_s"] = cut.start()
        f["settled_s"] = f["ready_s"] + cut.wait_idle()  # idle again: the first render (after the ports open) is done
        f["cp_seeded_mb"] = cut.memory_mb()["pss_anon_mb"]
        began_cpu = cut.cpu_seconds()
        connected = cut.connect(spread=1.0, timeout=max(60.0, self.topology.dataplanes / 50))
        f["connect_s"] = connected["seconds"]
        f["connect_cpu_s"] = cut.cpu_seconds() - began_cpu
        f["connect_timed_out"] = float(connected["timed_out"])
        self.details["connect"] = connected
        time.sleep(1.0)
        f["cp_connected_mb"] = cut.memory_mb()["pss_anon_mb"]
        f["cp_connected_rss_mb"] = cut.memory_mb()["rss_mb"]

    def measure_change(
        self, apply: Callable[[], object], expected: list[int], into: ChangeStats, timeout: float
    ) -> None:
        sim, cut = self.sim, self.cut
        sim.mark()
        cpu0, sim0 = cut.cpu_seconds(), measure.cpu_seconds(sim.pid)
        began = time.monotonic()
        apply()
        result = sim.collect(began, expect=len(expected), quiet=self.settings.quiet, timeout=timeout)
        # CPU until the quiet period after the last ACK ended (idle time costs nothing)
        into.add(result, set(expected), cut.cpu_seconds() - cpu0, measure.cpu_seconds(sim.pid) - sim0)

    def propagation(self, progress: Progress) -> None:
        name = f"cp-{self.topology.dataplanes}-changes"
        with profiling(self.cut.pid, name, self.settings.profile_dir):
            self._propagation(progress)

    def _propagation(self, progress: Progress) -> None:
        t, api = self.topology, self.cut.api
        timeout = max(30.0, t.dataplanes / 100)
        hub, scoped, fresh, gone = ChangeStats(), ChangeStats(), ChangeStats(), ChangeStats()
        ordinary = "svc-3"
        hub_callers, ordinary_callers = t.reaching(HUB), t.reaching(ordinary)
        fresh_callers = t.reaching(FRESH)
        for r in range(1, self.settings.rounds + 1):
            progress(f"  {t.dataplanes} dataplanes, round {r}/{self.settings.rounds}")
            self.measure_change(partial(api.apply, route_for(HUB, r)), hub_callers, hub, timeout)
            self.measure_change(partial(api.apply, route_for(ordinary, r)), ordinary_callers, scoped, timeout)
            doc = fresh_instance(t, r)
            path = f"/api/v1/meshes/{MESH}/dataplanes/{doc['name']}"
            self.measure_change(partial(api.request, "PUT", path, doc), fresh_callers, fresh, timeout)
            self.measure_change(partial(api.request, "DELETE", path), fresh_callers, gone, timeout)
        self.figures.update(hub.figures("route_all"))
        self.figures.update(scoped.figures("route_some"))
        self.figures.update(fresh.figures("new_service"))
        self.figures.update(gone.figures("service_removed"))
        self.details["route_some_service"] = ordinary

    def churn(self, progress: Progress) -> None:
        """Instance changes at a fixed rate (thread) while probes measure propagation meanwhile."""
        s, t, api, sim = self.settings, self.topology, self.cut.api, self.sim
        candidates = [i for i in range(t.dataplanes) if t.service_of(i) != HUB]
        rng = random.Random(7)
        ready = dict.fromkeys(candidates, True)
        writes: list[tuple[float, float]] = []  # (when, API latency)
        stop = threading.Event()

        def churn_loop() -> None:
            began = time.monotonic()
            n = 0
            while not stop.is_set():
                due = began + n / s.churn_rate
                delay = due - time.monotonic()
                if delay > 0 and stop.wait(delay):
                    break
                i = rng.choice(candidates)
                ready[i] = not ready[i]
                doc = t.dataplane(i, ready=ready[i])
                sent = time.monotonic()
                api.request("PUT", f"/api/v1/meshes/{MESH}/dataplanes/{doc['name']}", doc)
                writes.append((sent, time.monotonic() - sent))
                n += 1

        before = sim.status()
        cpu0, began = self.cut.cpu_seconds(), time.monotonic()
        worker = threading.Thread(target=churn_loop, name="churn", daemon=True)
        worker.start()
        probes: list[float] = []
        probe_round = 100
        hub_callers = len(t.reaching(HUB))
        try:
            while time.monotonic() - began < s.churn_seconds:
                time.sleep(min(s.probe_every, max(0.0, s.churn_seconds - (time.monotonic() - began))))
                if time.monotonic() - began >= s.churn_seconds:
                    break
                probe_round += 1
                sim.mark()
                sent = time.monotonic()
                api.apply(route_for(HUB, probe_round))
                result = sim.collect(sent, expect=hub_callers, quiet=0, timeout=30, types=["RDS"])
                probes.append(stats.distribution(result["latencies"])["p99"] if result["latencies"] else float("inf"))
        finally:
            stop.set()
            worker.join(10)
        ended = time.monotonic()
        cpu = self.cut.cpu_seconds() - cpu0
        last_write = max((w[0] + w[1] for w in writes), default=ended)
        quiet = sim.collect(last_write, expect=0, quiet=1.0, timeout=60)
        after = sim.status()
        drain = max(0.0, after["last_push_at"] - last_write)
        duration = ended - began
        f = self.figures
        f["churn.changes"] = float(len(writes))
        f["churn.rate"] = len(writes) / duration
        f["churn.cp_cpu_share"] = cpu / duration  # fraction of one core
        f["churn.drain_s"] = drain
        lat = [w[1] for w in writes]
        f["churn.write_p50_s"] = stats.distribution(lat)["p50"]
        f["churn.write_p99_s"] = stats.distribution(lat)["p99"]
        if probes:
            third = max(1, len(probes) // 3)
            f["churn.probe_p99_s"] = max(probes)
            f["churn.probe_first_third_s"] = statistics.median(probes[:third])
            f["churn.probe_last_third_s"] = statistics.median(probes[-third:])
        eds = after["total_pushes"].get("EDS", 0) - before["total_pushes"].get("EDS", 0)
        f["churn.eds_pushes_per_s"] = eds / duration
        self.details["churn"] = {"probes_p99_s": probes, "quiet": {k: v for k, v in quiet.items() if k != "latencies"}}
        progress(f"  churn: {len(writes)} changes in {duration:.0f} s, probes p99 {probes}, drain {drain:.2f} s")

    def storm(self, progress: Progress) -> None:
        """Restart the control plane; every stream reconnects; how long until all are synced again."""
        sim, cut = self.sim, self.cut
        sim.collect(time.monotonic(), expect=0, quiet=2.0, timeout=120)  # start from a settled mesh
        before = sim.versions()
        cut.stop()
        began = time.monotonic()
        ready = cut.start()
        with profiling(cut.pid, f"cp-{self.topology.dataplanes}-storm", self.settings.profile_dir):
            result = sim.wait_synced(timeout=max(60.0, self.topology.dataplanes / 50))
        after = sim.versions()
        f = self.figures
        f["storm.ready_s"] = ready
        f["storm.converged_s"] = result["at"] - began if not result["timed_out"] else float("inf")
        times = [x for x in sim.synced_times(began) if x is not None]
        d = stats.distribution(times)
        f["storm.p50_s"], f["storm.p99_s"] = d["p50"], d["p99"]
        f["storm.synced"] = float(result["synced"])
        f["storm.config_changed"] = float(sum(1 for node, v in after.items() if before.get(node) != v))
        f["cp_after_storm_mb"] = cut.memory_mb()["pss_anon_mb"]
        self.details["storm"] = {k: v for k, v in result.items() if k != "at"}
        progress(f"  storm: all {result['synced']} synced {f['storm.converged_s']:.1f} s after the restart")


def empty_control_plane_mb(procs: ProcessGroup, workdir: Path, env: dict[str, str] | None = None) -> tuple[float, float]:
    """(ready seconds, Pss_Anon MB) of a control plane with nothing in its store."""
    began = time.monotonic()
    cp = mesh.start_control_plane(procs, workdir / "empty-cp", name="control-plane-empty", env=env)
    ready = time.monotonic() - began
    time.sleep(1.0)
    mb = measure.memory(cp.pid).pss_anon_mb
    procs.stop(cp.pid)
    return ready, mb


def run_session(
    procs: ProcessGroup, workdir: Path, size: int, settings: ScaleSettings, progress: Progress
) -> tuple[dict[str, float], dict[str, Any]]:
    session = Session(procs, workdir, size, settings)
    progress(f"control plane with {size} simulated dataplanes: seeding, starting, connecting")
    session.start()
    session.propagation(progress)
    if size == settings.churn_size:
        session.churn(progress)
    session.storm(progress)
    session.close()
    return session.figures, session.details


def floor_session(procs: ProcessGroup, workdir: Path, size: int, rounds: int, progress: Progress) -> dict[str, float]:
    """The bare grpc.aio ADS server (floor.py) with ``size`` simulated streams: memory per
    stream, and CPU per stream per pushed type for a route push to every stream."""
    progress(f"floor: a bare grpc.aio ADS server with {size} simulated dataplanes")
    port = free_port()
    server = procs.spawn("floor-server", [sys.executable, "-m", "benchmarks.controlplane.floor", "--port", str(port)],
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}, pipes=True)  # fmt: skip
    assert server.stdin is not None and server.stdout is not None
    if server.stdout.readline().strip() != b"ready":
        raise ProcessError(f"floor server did not start:\n{procs.log_tail('floor-server')}")
    time.sleep(0.5)
    empty = measure.memory(server.pid).pss_anon_mb
    sim = Simulator(procs, f"127.0.0.1:{port}", None, name="adssim-floor")
    sim.start([{"node": f"{MESH}.dp-{i}", "token": None} for i in range(size)], spread=1.0)
    synced = sim.wait_synced(timeout=max(60.0, size / 50))
    time.sleep(1.0)
    figures = {"streams": float(synced["synced"]),
               "per_stream_kb": (measure.memory(server.pid).pss_anon_mb - empty) * 1024 / size}  # fmt: skip
    cpu, p99 = [], []
    for _ in range(rounds):
        sim.mark()
        cpu0, began = measure.cpu_seconds(server.pid), time.monotonic()
        server.stdin.write(b"push\n")
        server.stdin.flush()
        server.stdout.readline()
        result = sim.collect(began, expect=size, quiet=0.5, timeout=60)
        cpu.append(measure.cpu_seconds(server.pid) - cpu0)
        p99.append(stats.distribution(result["latencies"])["p99"])
    figures["push_cpu_ms_per_stream"] = statistics.median(cpu) * 1000 / size
    figures["push_p99_s"] = statistics.median(p99)
    sim.quit()
    procs.stop(sim.pid)
    procs.stop(server.pid)
    return figures


def plaintext_memory(procs: ProcessGroup, workdir: Path, size: int, settings: ScaleSettings, progress: Progress) -> dict[str, float]:
    """Our control plane with xDS in plaintext (MESHLINE_AUTH=off): memory per stream, and the
    CPU of a route change per dataplane, to set beside the floor (which has no TLS either)."""
    progress(f"control plane, plaintext xDS, {size} simulated dataplanes (beside the floor)")
    session = Session(procs, workdir, size, settings)
    session.cut.env["MESHLINE_AUTH"] = "off"
    session.start()
    f = session.figures
    out = {"per_stream_kb": (f["cp_connected_mb"] - f["cp_seeded_mb"]) * 1024 / size}
    stats_ = ChangeStats()
    t = session.topology
    for r in range(1, settings.rounds + 2):
        session.measure_change(partial(session.cut.api.apply, route_for(HUB, r)), t.reaching(HUB), stats_, 60)
    # the first round also changes clusters (route metadata); the rest are route-only
    out["route_cpu_ms_per_dataplane"] = statistics.median(stats_.cpu_seconds[1:]) * 1000 / size
    out["route_p99_s"] = statistics.median(stats_.round_p99[1:])
    session.close()
    return out
