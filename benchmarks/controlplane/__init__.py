"""Control-plane benchmarks: the scenarios ``python -m benchmarks`` runs after the data-plane ones.

| key | what |
|---|---|
| ``cp-scale`` | simulated dataplanes (``benchmarks/adssim``): propagation, scoped pushes, churn, control-plane memory per dataplane, reconnect storm (``scale.py``) |
| ``cp-floor`` | a bare grpc.aio ADS server (``floor.py``) beside ours, both plaintext: what grpc.aio itself costs |
| ``cp-sidecars`` | many real sidecars (agent + Envoy) connecting at once (``real.py``) |
| ``cp-startup`` | ``meshline control-plane`` ready; ``meshline up`` until its first request through the demo |
| ``mesh-size`` | one real sidecar's memory in a small and a large mesh |
| ``transparent`` | two sidecars across two test hosts, explicit against transparent mode (``benchmarks/transparent.py``) |
| ``gateway`` | the ingress gateway against a hand-written Envoy front proxy, same TLS termination (``benchmarks/gateway.py``) |

Each returns flat figures; :func:`checks` turns them into the issue's targets with anchors.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import targets as t
from benchmarks.controlplane import real, scale
from benchmarks.procs import ProcessGroup
from benchmarks.targets import Check

Progress = Callable[[str], None]


@dataclass(frozen=True)
class CpSettings:
    mode: str
    scale: scale.ScaleSettings
    sidecars: int  # real sidecars started at once
    startup_runs: int
    mesh_sizes: tuple[int, int]  # services in the small and the large mesh
    reach: int  # services the measured workload reaches
    settle: float  # seconds a real sidecar runs before its memory is read


QUICK = CpSettings(
    mode="quick",
    scale=scale.ScaleSettings(
        sizes=(50,), rounds=2, quiet=0.3, churn_size=50, churn_rate=10, churn_seconds=3, probe_every=1
    ),
    sidecars=3,
    startup_runs=1,
    mesh_sizes=(10, 50),
    reach=5,
    settle=1.0,
)
FULL = CpSettings(
    mode="full",
    scale=scale.ScaleSettings(
        sizes=(1000, 5000), rounds=5, quiet=1.0, churn_size=1000, churn_rate=10, churn_seconds=60,
        probe_every=5,
    ),  # fmt: skip
    sidecars=50,
    startup_runs=3,
    mesh_sizes=(10, 1000),
    reach=5,
    settle=5.0,
)


@dataclass
class CpRun:
    key: str
    label: str
    figures: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "figures": self.figures, "details": self.details,
                "seconds": self.seconds, "error": self.error, "checks": [c.to_json() for c in checks(self)]}  # fmt: skip


def _scale(settings: CpSettings, procs: ProcessGroup, workdir: Path, progress: Progress) -> CpRun:
    run = CpRun("cp-scale", "control plane at scale (simulated dataplanes)")
    ready, empty = scale.empty_control_plane_mb(procs, workdir, settings.scale.cp_env())
    run.figures["cp_empty_mb"], run.figures["cp_empty_ready_s"] = empty, ready
    for size in settings.scale.sizes:
        figures, details = scale.run_session(procs, workdir / f"n{size}", size, settings.scale, progress)
        run.figures.update({f"n{size}.{k}": v for k, v in figures.items()})
        run.details[f"n{size}"] = details
    return run


def _floor(settings: CpSettings, procs: ProcessGroup, workdir: Path, progress: Progress) -> CpRun:
    run = CpRun("cp-floor", "the floor: bare grpc.aio ADS server vs ours, plaintext")
    size = settings.scale.sizes[0]
    bare = scale.floor_session(procs, workdir / "bare", size, 3, progress)
    ours = scale.plaintext_memory(procs, workdir / "ours", size, settings.scale, progress)
    run.figures.update({f"bare.{k}": v for k, v in bare.items()})
    run.figures.update({f"ours.{k}": v for k, v in ours.items()})
    run.figures["dataplanes"] = float(size)
    return run


def _sidecars(settings: CpSettings, procs: ProcessGroup, workdir: Path, progress: Progress) -> CpRun:
    run = CpRun("cp-sidecars", f"{settings.sidecars} real sidecars at once")
    run.figures = real.many_sidecars(procs, workdir, settings.sidecars, progress)
    return run


def _startup(settings: CpSettings, procs: ProcessGroup, workdir: Path, progress: Progress) -> CpRun:
    run = CpRun("cp-startup", "start-up: control plane, meshline up")
    run.figures = real.startup(procs, workdir, settings.startup_runs, progress)
    return run


def _mesh_size(settings: CpSettings, procs: ProcessGroup, workdir: Path, progress: Progress) -> CpRun:
    run = CpRun("mesh-size", "sidecar memory against mesh size")
    for services in settings.mesh_sizes:
        figures = real.mesh_size(procs, workdir, services, settings.reach, settings.settle, progress)
        run.figures.update({f"m{services}.{k}": v for k, v in figures.items()})
    small, large = settings.mesh_sizes
    run.figures["large_over_small"] = run.figures[f"m{large}.sidecar_mb"] / run.figures[f"m{small}.sidecar_mb"]
    run.figures["envoy_large_over_small"] = run.figures[f"m{large}.envoy_mb"] / run.figures[f"m{small}.envoy_mb"]
    return run


def _transparent(settings: CpSettings, procs: ProcessGroup, workdir: Path, progress: Progress) -> CpRun:
    from benchmarks import transparent

    run = CpRun("transparent", "two sidecars across two hosts: explicit vs transparent")
    rounds, seconds = (1, 2.0) if settings.mode == "quick" else (9, 6.0)
    run.figures, run.details["rounds"] = transparent.run(procs, workdir, rounds, seconds, progress)
    return run


def _gateway(settings: CpSettings, procs: ProcessGroup, workdir: Path, progress: Progress) -> CpRun:
    from benchmarks import gateway

    run = CpRun("gateway", "ingress gateway vs a hand-written Envoy front proxy (TLS termination)")
    rounds, seconds = (1, 2.0) if settings.mode == "quick" else (5, 6.0)  # wrk takes whole seconds (c1: half)
    run.figures, run.details["rounds"] = gateway.run(procs, workdir, rounds, seconds, progress)
    return run


@dataclass(frozen=True)
class CpScenario:
    key: str
    label: str
    description: str
    run: Callable[[CpSettings, ProcessGroup, Path, Progress], CpRun]
    requires: tuple[str, ...] = ()


SCENARIOS: dict[str, CpScenario] = {
    s.key: s
    for s in (
        CpScenario("cp-scale", "control plane at scale",
                   "simulated dataplanes: propagation, scoped pushes, churn, memory, reconnect storm", _scale),
        CpScenario("cp-floor", "the floor",
                   "a bare grpc.aio ADS server beside ours (plaintext): per-stream memory and push CPU", _floor),
        CpScenario("cp-sidecars", "real sidecars at once",
                   "many real agents + Envoys connect to one control plane", _sidecars, ("envoy",)),
        CpScenario("cp-startup", "start-up", "meshline control-plane ready; meshline up's first request",
                   _startup, ("envoy",)),
        CpScenario("mesh-size", "memory vs mesh size",
                   "a sidecar reaching 5 services, in a small and a large mesh", _mesh_size, ("envoy",)),
        CpScenario("transparent", "explicit vs transparent",
                   "two sidecars across two test hosts (netns, as root), --upstream against capture rules",
                   _transparent, ("envoy", "wrk", "nginx", "nft")),
        CpScenario("gateway", "gateway vs hand-written front proxy",
                   "HTTPS termination by `meshline gateway` against a static Envoy doing the same (netns, as root)",
                   _gateway, ("envoy", "wrk", "nginx")),
    )
}  # fmt: skip


def run_all(
    chosen: list[CpScenario],
    settings: CpSettings,
    workdir: Path,
    progress: Progress,
    before_each: Callable[[], object] = lambda: None,
) -> dict[str, CpRun]:
    """Run each scenario in its own process group; a failure is recorded and the next one runs.

    ``before_each`` runs first each time (the harness waits there for a quiet machine).
    """
    runs: dict[str, CpRun] = {}
    for scenario in chosen:
        before_each()
        progress(f"{scenario.label}: {scenario.description}")
        began = time.monotonic()
        with ProcessGroup(workdir / scenario.key / "logs") as procs:
            try:
                run = scenario.run(settings, procs, workdir / scenario.key, progress)
            except Exception as err:  # report it with the others; the suite goes on
                run = CpRun(scenario.key, scenario.label, error=f"{type(err).__name__}: {err}")
                run.details["traceback"] = traceback.format_exc()
                progress(f"[red]{scenario.key} failed: {err}[/]")
        run.seconds = time.monotonic() - began
        runs[scenario.key] = run
    return runs


def _get(f: dict[str, float], key: str) -> float | None:
    value = f.get(key)
    return None if value is None or value != value else value  # NaN: not measured


def _rounds_note(f: dict[str, float], prefix: str) -> str:
    first, later = f.get(f"{prefix}.first_round_p99_s"), f.get(f"{prefix}.later_rounds_p99_s")
    cpu, sim = f.get(f"{prefix}.cpu_s"), f.get(f"{prefix}.sim_cpu_s")
    parts = []
    if first is not None and later is not None:
        parts.append(f"p99 first round {first:.2f} s, later rounds at most {later:.2f} s")
    if cpu is not None and sim is not None:
        parts.append(f"CPU per change: control plane {cpu:.2f} s, simulator {sim:.2f} s (same 2 vCPUs)")
    return "; ".join(parts)


def checks(run: CpRun) -> list[Check]:
    """The issue's control-plane targets, from one scenario's figures."""
    f = run.figures
    out: list[Check] = []
    if run.key == "cp-scale":
        for size, route_target, new_target in ((1000, 0.5, 1.5), (5000, 2.0, 5.0), (50, 0.5, 1.5)):
            p = f"n{size}."
            if f"{p}route_all.p99_s" not in f:
                continue
            n = f"{size:,} dataplanes"
            out += [
                Check(f"route change for a service all reach, p99, {n}", _get(f, f"{p}route_all.p99_s"), "s",
                      route_target, anchor=t.ANCHOR_PROPAGATION, note=_rounds_note(f, f"{p}route_all")),
                Check(f"new service (CDS+EDS+LDS+RDS), p99, {n}", _get(f, f"{p}new_service.p99_s"), "s",
                      new_target, anchor=t.ANCHOR_PROPAGATION, note=_rounds_note(f, f"{p}new_service")),
                Check(f"change only some see: pushes beyond its {f[p + 'route_some.expected']:.0f} callers, {n}",
                      _get(f, f"{p}route_some.extra_pushes"), "", 0),
                Check(f"reconnect storm: all synced after restart, {n}", _get(f, f"{p}storm.converged_s"), "s",
                      15.0, anchor=t.ANCHOR_STORM),
                Check(f"reconnect storm: configs changed, {n}", _get(f, f"{p}storm.config_changed"), "", 0),
            ]  # fmt: skip
            connected, empty = _get(f, f"{p}cp_connected_mb"), _get(f, "cp_empty_mb")
            if connected is not None and empty is not None:
                per = (connected - empty) * 1024 / size
                out.append(Check(f"control-plane memory per connected dataplane, {n}", per, "KB", 100,
                                 anchor=t.ANCHOR_CP_MEMORY))  # fmt: skip
            if f"{p}churn.probe_p99_s" in f:
                out += [
                    Check(f"churn {f[p + 'churn.rate']:.1f} changes/s: drain after the last one, {n}",
                          _get(f, f"{p}churn.drain_s"), "s", 1.0,
                          note="no growing backlog: pushes stop within a second of the last change"),
                    Check(f"churn: route change p99 meanwhile (last third of the run), {n}",
                          _get(f, f"{p}churn.probe_last_third_s"), "s", route_target),
                ]  # fmt: skip
    elif run.key == "cp-sidecars":
        n = f"{f.get('sidecars', 0):.0f}"
        out += [
            Check(f"{n} real sidecars: xDS connect to converged (slowest)",
                  _get(f, "connect_to_converged_max_s"), "s", 10.0,
                  note=f"median {f.get('connect_to_converged_p50_s', 0):.2f} s"),
            Check(f"{n} real sidecars: all started at once, to all in sync", _get(f, "all_in_sync_s"), "s", 10.0,
                  note=f"agent start-up (spawn to Envoy connected) median {f.get('spawn_to_connected_p50_s', 0):.1f} s: "
                       f"{n} Python agents and Envoys starting on 2 vCPUs"),
        ]  # fmt: skip
    elif run.key == "cp-startup":
        out += [
            Check("control plane ready (API + xDS), empty data dir", _get(f, "cp_ready_fresh_s"), "s", 2.0),
            Check("control plane ready again (existing data dir)", _get(f, "cp_ready_again_s"), "s", 2.0),
            Check("meshline up: first request through the demo", _get(f, "up_first_request_s"), "s", 10.0),
        ]
    elif run.key == "transparent":
        for k, what in (("c16_p50_ms", "p50, 16 connections"), ("c16_p90_ms", "p90, 16 connections"),
                        ("c16_p99_ms", "p99, 16 connections"), ("c1_p50_ms", "p50, 1 connection")):
            out.append(Check(f"transparent / explicit latency, {what}", _get(f, f"ratio.{k}"), "x", 1.05,
                             note=f"explicit {f.get('explicit.' + k, 0):.2f} ms, transparent"
                                  f" {f.get('transparent.' + k, 0):.2f} ms; round ratios spread"
                                  f" {f.get('ratio_spread.' + k, 0):.2f}"))  # fmt: skip
        out.append(Check("transparent / explicit saturation throughput", _get(f, "ratio.rps"), "x", 0.95,
                         better="higher", note=f"explicit {f.get('explicit.rps', 0):,.0f} req/s, transparent"
                                               f" {f.get('transparent.rps', 0):,.0f} req/s; round ratios spread"
                                               f" {f.get('ratio_spread.rps', 0):.2f}"))  # fmt: skip
    elif run.key == "gateway":
        for prefix, label in (("", "mesh defaults"), ("nostream.", "log streaming off")):
            for k, what in (("c16_p50_ms", "p50, 16 connections"), ("c16_p90_ms", "p90, 16 connections"),
                            ("c16_p99_ms", "p99, 16 connections"), ("c1_p50_ms", "p50, 1 connection")):
                out.append(Check(f"gateway ({label}) / hand-written front proxy latency, {what}",
                                 _get(f, f"{prefix}ratio.{k}"), "x", 1.10,
                                 note=f"hand-written {f.get(prefix + 'handwritten.' + k, 0):.2f} ms, gateway"
                                      f" {f.get(prefix + 'gateway.' + k, 0):.2f} ms; round ratios spread"
                                      f" {f.get(prefix + 'ratio_spread.' + k, 0):.2f}"))  # fmt: skip
            out.append(Check(f"gateway ({label}) / hand-written front proxy throughput", _get(f, f"{prefix}ratio.rps"),
                             "x", 0.95, better="higher",
                             note=f"hand-written {f.get(prefix + 'handwritten.rps', 0):,.0f} req/s, gateway"
                                  f" {f.get(prefix + 'gateway.rps', 0):,.0f} req/s; round ratios spread"
                                  f" {f.get(prefix + 'ratio_spread.rps', 0):.2f}"))  # fmt: skip
    elif run.key == "mesh-size":
        out.append(Check("sidecar memory, large mesh / small mesh", _get(f, "large_over_small"), "x", 1.10,
                         anchor=t.ANCHOR_MESH_SIZE))  # fmt: skip
        for services in sorted(int(k[1:].split(".")[0]) for k in f if k.endswith(".unreached_clusters")):
            out.append(Check(f"mesh of {services:,} services: clusters sent for services not reached",
                             _get(f, f"m{services}.unreached_clusters"), "", 0,
                             note=f"{f[f'm{services}.service_clusters']:.0f} service clusters in its Envoy"))
    return out
