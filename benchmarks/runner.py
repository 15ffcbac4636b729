"""Run scenarios and measure them: fixed-rate latency, saturation throughput, CPU, memory.

For each round, each scenario in turn: start it, read its proxies' idle memory, run the
fixed-rate load (CPU sampled over the measured window), run wrk (CPU sampled around it),
read memory again, check every process is still alive, stop it. A round's figures are a
flat ``{name: number}`` dict; the summary of a scenario is the per-figure median over
rounds (errors are summed), so scenarios are compared on figures taken in the same run,
interleaved in time.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import measure, tools
from benchmarks.loadgen import openloop, wrk
from benchmarks.procs import ProcessGroup
from benchmarks.scenarios import Scenario, ScenarioEnv, Target, Upstream
from benchmarks.scenarios.upstream import start_nginx

Figures = dict[str, float]
LATENCY_KEYS = ("p50", "p90", "p99", "p99.9", "max")
SUMMED = ("errors", "wrk_errors")  # summed over rounds instead of the median


@dataclass(frozen=True)
class RunSettings:
    mode: str
    rate: float  # fixed-rate load, req/s
    fixed_seconds: float  # measured part of the fixed-rate run
    warmup_seconds: float  # before it, same rate, not recorded
    saturation_seconds: float  # wrk duration (0: skip saturation)
    rounds: int
    connections: int = 16
    wrk_threads: int = 1
    spin_us: float = 50.0
    quiet_timeout: float = 0.0  # wait up to this long before a round for the machine to be idle
    quiet_busy: float = 0.15  # "idle": at most this fraction of all CPUs busy (others' work)
    noisy_retries: int = 0  # redo a round whose generator lag says the machine was busy, this often


QUICK = RunSettings(
    mode="quick", rate=1000, fixed_seconds=1.5, warmup_seconds=0.5, saturation_seconds=1, rounds=1
)
FULL = RunSettings(
    mode="full",
    rate=1000,
    fixed_seconds=20,
    warmup_seconds=3,
    saturation_seconds=10,
    rounds=3,
    quiet_timeout=300,
    noisy_retries=2,
)
NOISY_LAG_MS = 0.5  # generator send lag p99 above this: the machine was busy, the tails are noise


@dataclass
class ScenarioRun:
    """One scenario's results: every round's figures and their summary."""

    key: str
    label: str
    description: str
    rounds: list[Figures] = field(default_factory=list)
    details: list[dict[str, Any]] = field(default_factory=list)  # raw tool output per round
    discarded: list[Figures] = field(default_factory=list)  # rounds redone: the machine was busy
    proxies: list[str] = field(default_factory=list)
    others: list[str] = field(default_factory=list)  # measured, not counted as proxy cost
    sidecars: dict[str, list[str]] = field(default_factory=dict)  # sidecar -> its roles
    skipped: str | None = None

    def summary(self) -> Figures:
        if not self.rounds:
            return {}
        keys = {k for r in self.rounds for k in r}
        out: Figures = {}
        for key in sorted(keys):
            values = [r[key] for r in self.rounds if key in r]
            out[key] = float(sum(values)) if key in SUMMED else float(statistics.median(values))
        return out


def _cpu_figures(
    target: Target, used: dict[str, float], requests: float, figures: Figures, prefix: str
) -> None:
    """Per role, summed over the proxies, per sidecar and the costliest sidecar."""
    for role, seconds in used.items():
        figures[f"{prefix}.{role}"] = measure.vcpu_per_krps(seconds, requests)
    figures[prefix] = measure.vcpu_per_krps(sum(used[r] for r in target.proxies), requests)
    per_sidecar = {
        name: measure.vcpu_per_krps(sum(used[r] for r in roles), requests)
        for name, roles in target.sidecar_roles().items()
    }
    for name, value in per_sidecar.items():
        figures[f"sidecar_{prefix}.{name}"] = value
    figures[f"sidecar_{prefix}_max"] = max(per_sidecar.values())


def _measured(target: Target) -> dict[str, int]:
    return {**target.proxies, **target.others}


def _measure_fixed_rate(target: Target, settings: RunSettings, figures: Figures, exe: Path) -> dict[str, Any]:
    cpu = measure.CpuWindow(_measured(target))
    window: dict[str, float] = {}

    def start() -> None:
        cpu.start()
        window["start"] = time.monotonic()

    def stop() -> None:
        window["end"] = time.monotonic()
        cpu.stop()

    result = openloop.run(
        target.url,
        openloop.OpenLoopSettings(
            rate=settings.rate,
            seconds=settings.warmup_seconds + settings.fixed_seconds,
            warmup=settings.warmup_seconds,
            connections=settings.connections,
            spin_us=settings.spin_us,
        ),
        on_window_start=start,
        on_window_end=stop,
        exe=exe,
    )
    for key in LATENCY_KEYS:
        figures[f"{key}_ms"] = result.latency[key]
    figures["achieved_rps"] = result.achieved_rate
    figures["errors"] = float(result.errors)
    figures["loadgen_lag_p99_ms"] = result.send_lag["p99"]
    if target.proxies and cpu.used and "end" in window:
        # Requests due inside the window: the schedule is fixed, so rate * window length.
        requests = settings.rate * (window["end"] - window["start"])
        _cpu_figures(target, cpu.used, requests, figures, "cpu")
    return result.raw


def _measure_saturation(target: Target, settings: RunSettings, figures: Figures) -> dict[str, Any]:
    cpu = measure.CpuWindow(_measured(target))
    result = wrk.run(
        target.url,
        seconds=settings.saturation_seconds,
        connections=settings.connections,
        threads=settings.wrk_threads,
        before=cpu.start,
    )
    cpu.stop()
    figures["saturation_rps"] = result.rps
    figures["wrk_errors"] = float(result.socket_errors + result.non_2xx)
    if target.proxies and cpu.used:
        _cpu_figures(target, cpu.used, result.requests, figures, "cpu_sat")
    return asdict(result)


def _memory(target: Target, figures: Figures, prefix: str) -> None:
    totals = {"pss_anon_mb": 0.0, "private_dirty_mb": 0.0, "rss_mb": 0.0}
    usage = {role: measure.memory(pid).as_dict() for role, pid in _measured(target).items()}
    for role, values in usage.items():
        for key, value in values.items():
            figures[f"{prefix}{key}.{role}"] = value
            if role in target.proxies:
                totals[key] += value
    if target.proxies:
        for key, value in totals.items():
            figures[f"{prefix}{key}"] = value
        # A sidecar's private memory (agent + Envoy when it has an agent); the largest one.
        per_sidecar = {
            name: sum(usage[r]["pss_anon_mb"] for r in roles)
            for name, roles in target.sidecar_roles().items()
        }
        for name, value in per_sidecar.items():
            figures[f"{prefix}sidecar_pss_anon_mb.{name}"] = value
        figures[f"{prefix}sidecar_pss_anon_mb_max"] = max(per_sidecar.values())


def measure_scenario(
    env: ScenarioEnv, scenario: Scenario, settings: RunSettings, loadgen: Path
) -> tuple[Figures, dict[str, Any], Target]:
    """Start ``scenario`` in ``env`` and take one round of figures (the caller stops it)."""
    figures: Figures = {}
    began = time.monotonic()
    target = scenario.start(env)
    figures["startup_s"] = time.monotonic() - began
    _memory(target, figures, "idle_")
    details: dict[str, Any] = {"url": target.url, "pids": dict(target.proxies)}
    details["fixed_rate"] = _measure_fixed_rate(target, settings, figures, loadgen)
    if settings.saturation_seconds > 0:
        details["saturation"] = _measure_saturation(target, settings, figures)
    _memory(target, figures, "")
    env.procs.check_alive()  # a proxy that died mid-run invalidates the round
    return figures, details, target


def wait_for_quiet(settings: RunSettings, progress: Callable[[str], None]) -> float:
    """Wait (at most ``quiet_timeout`` s) until other work leaves the CPUs; return the busy fraction.

    Between rounds nothing of ours is running, so whatever keeps the CPUs busy is someone
    else's and would show up as latency tails and lost throughput.
    """
    deadline = time.monotonic() + settings.quiet_timeout
    busy = measure.machine_busy(0.5)
    warned = False
    while busy > settings.quiet_busy and time.monotonic() < deadline:
        if not warned:
            progress(f"machine {busy:.0%} busy with other work: waiting up to {settings.quiet_timeout:.0f} s")
            warned = True
        busy = measure.machine_busy(2.0)
    return busy


def missing_requirements(scenario: Scenario, settings: RunSettings) -> list[str]:
    needed = ["nginx", *scenario.requires]
    if settings.saturation_seconds > 0:
        needed.append("wrk")
    return [name for name in needed if tools.find(name) is None]


def run_all(
    scenarios: Sequence[Scenario],
    settings: RunSettings,
    *,
    skip_missing: bool = False,
    progress: Callable[[str], None] = print,
) -> dict[str, ScenarioRun]:
    """Run every scenario ``settings.rounds`` times against one shared nginx."""
    runs = {s.key: ScenarioRun(s.key, s.label, s.description) for s in scenarios}
    active = []
    for scenario in scenarios:
        missing = missing_requirements(scenario, settings)
        if missing and not skip_missing:
            raise tools.MissingTool(f"{scenario.key}: missing {', '.join(missing)} (or pass --skip-missing)")
        if missing:
            runs[scenario.key].skipped = f"missing {', '.join(missing)}"
            progress(f"skip {scenario.key}: missing {', '.join(missing)}")
        else:
            active.append(scenario)
    if not active:
        return runs
    loadgen = openloop.build()  # once, before anything is timed
    with (
        tempfile.TemporaryDirectory(prefix="meshline-bench-") as tmp,
        ProcessGroup(Path(tmp) / "upstream") as up,
    ):
        upstream: Upstream = start_nginx(Path(tmp) / "upstream", up)[0]
        for round_no in range(1, settings.rounds + 1):
            for scenario in active:
                run = runs[scenario.key]
                for attempt in range(settings.noisy_retries + 1):
                    busy = wait_for_quiet(settings, progress)
                    progress(
                        f"round {round_no}/{settings.rounds}: {scenario.label} (machine {busy:.0%} busy before)"
                    )
                    workdir = Path(tmp) / f"{scenario.key}-{round_no}-{attempt}"
                    with ProcessGroup(workdir / "logs") as procs:
                        env = ScenarioEnv(workdir=workdir, procs=procs, upstream=upstream)
                        figures, details, target = measure_scenario(env, scenario, settings, loadgen)
                    figures["machine_busy_before"] = busy
                    lag = figures["loadgen_lag_p99_ms"]
                    if lag <= NOISY_LAG_MS or attempt == settings.noisy_retries:
                        break
                    progress(f"  generator lag p99 {lag:.2f} ms: the machine was busy; redoing the round")
                    run.discarded.append(figures)
                run.rounds.append(figures)
                run.details.append(details)
                run.proxies = list(target.proxies)
                run.others = list(target.others)
                run.sidecars = {k: list(v) for k, v in target.sidecar_roles().items()}
                up.check_alive()
    return runs
