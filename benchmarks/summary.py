"""Every figure next to its target and anchor: the data-plane targets (from the data-plane
document) and the control-plane scenarios' figures and targets, for the terminal and RESULTS.md."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks import targets as t
from benchmarks.controlplane import CpRun, checks
from benchmarks.report import RESULTS_MD
from benchmarks.targets import Check

MESHLINE, BASELINE = "meshline", "envoy"


def dataplane_checks(document: Mapping[str, Any]) -> list[Check]:
    """(b) Meshline against (c) the hand-written Envoy pair, same run."""
    scenarios = document.get("scenarios", {})
    mine = scenarios.get(MESHLINE, {}).get("summary") or {}
    base = scenarios.get(BASELINE, {}).get("summary") or {}
    if not mine:
        return []
    out: list[Check] = []
    for pct, anchor in (("p50", ""), ("p90", t.ANCHOR_LATENCY), ("p99", t.ANCHOR_LATENCY)):
        added, ref = mine.get(f"added_{pct}_ms"), base.get(f"added_{pct}_ms")
        ratio = added / ref if added is not None and ref and ref > 0 and added > 0 else None
        raw = mine.get(f"{pct}_ms"), base.get(f"{pct}_ms")
        note = (f"added {added:.3f} ms vs {ref:.3f} ms; raw {raw[0]:.3f} vs {raw[1]:.3f} ms"
                if added is not None and ref is not None and None not in raw else "")  # fmt: skip
        out.append(Check(f"added latency {pct} at 1k req/s, meshline / envoy pair", ratio, "x", 1.10,
                         anchor=anchor, note=note))  # fmt: skip
    sat, sat_ref = mine.get("saturation_rps"), base.get("saturation_rps")
    out.append(Check("saturation throughput, meshline / envoy pair",
                     sat / sat_ref if sat and sat_ref else None, "x", 0.95, better="higher",
                     note=f"{sat:,.0f} vs {sat_ref:,.0f} req/s" if sat and sat_ref else ""))  # fmt: skip
    out.append(Check("sidecar CPU (agent + Envoy) per 1k req/s at 1k req/s, costliest sidecar",
                     mine.get("sidecar_cpu_max"), "vCPU", 0.15, anchor=t.ANCHOR_CPU,
                     note=f"envoy pair: {base['sidecar_cpu_max']:.3f} per Envoy" if "sidecar_cpu_max" in base else ""))  # fmt: skip
    out.append(Check("sidecar memory (agent + Envoy, Pss_Anon), largest sidecar",
                     mine.get("sidecar_pss_anon_mb_max"), "MB", 40.0, anchor=t.ANCHOR_MEMORY,
                     note=_memory_note(mine, base)))  # fmt: skip
    return out


def _memory_note(mine: Mapping[str, float], base: Mapping[str, float]) -> str:
    parts = [f"{role} {mine[key]:.1f}" for role in ("envoy-client", "agent-client")
             if (key := f"pss_anon_mb.{role}") in mine]  # fmt: skip
    if "sidecar_pss_anon_mb_max" in base:
        parts.append(f"envoy pair: {base['sidecar_pss_anon_mb_max']:.1f} per Envoy")
    return "; ".join(parts)


def all_checks(document: Mapping[str, Any], cp_runs: Mapping[str, CpRun]) -> list[Check]:
    out = dataplane_checks(document)
    for run in cp_runs.values():
        out += checks(run)
    return out


def print_checks(items: list[Check], console: Console) -> None:
    if not items:
        return
    table = Table(title="Targets (same run)", title_justify="left")
    for heading in ("figure", "measured", "target", "", "room", "anchor / note"):
        table.add_column(heading, justify="right" if heading in ("measured", "target", "room") else "left")
    for c in items:
        verdict = t.verdict(c)
        style = {"met": "green", "NOT met": "red"}.get(verdict, "dim")
        table.add_row(c.figure, c.value_text(), c.target_text(), f"[{style}]{verdict}[/]", c.room(),
                      "; ".join(x for x in (c.anchor, c.note) if x))  # fmt: skip
    console.print(table)


def checks_markdown(items: list[Check]) -> list[str]:
    if not items:
        return []
    lines = ["| figure | measured | target | | room | anchor / note |", "|---|---:|---:|---|---:|---|"]
    for c in items:
        note = "; ".join(x for x in (c.anchor, c.note) if x)
        lines.append(f"| {c.figure} | {c.value_text()} | {c.target_text()} | {t.verdict(c)} | {c.room()} | {note} |")
    return lines


# -- control-plane figures -------------------------------------------------------------
SCALE_ROWS: tuple[tuple[str, str, str], ...] = (
    ("ready_s", "control plane ready with the mesh in its store", "s"),
    ("connect_s", "all streams connected and synced (initial)", "s"),
    ("route_all.p50_s", "route change, all reach it: p50", "s"),
    ("route_all.p99_s", "route change, all reach it: p99", "s"),
    ("route_all.cpu_s", "route change: control-plane CPU", "s"),
    ("route_some.p99_s", "route change, some reach it: p99", "s"),
    ("route_some.pushed", "route change, some reach it: dataplanes pushed", ""),
    ("route_some.expected", "route change, some reach it: callers", ""),
    ("new_service.p50_s", "new service: p50", "s"),
    ("new_service.p99_s", "new service: p99", "s"),
    ("new_service.cpu_s", "new service: control-plane CPU", "s"),
    ("service_removed.p99_s", "service removed: p99", "s"),
    ("churn.rate", "churn: instance changes per second", ""),
    ("churn.probe_first_third_s", "churn: route change p99 meanwhile, first third", "s"),
    ("churn.probe_last_third_s", "churn: route change p99 meanwhile, last third", "s"),
    ("churn.drain_s", "churn: pushes end after the last change", "s"),
    ("churn.cp_cpu_share", "churn: control-plane CPU (cores)", ""),
    ("cp_seeded_mb", "control-plane Pss_Anon, no stream connected", "MB"),
    ("cp_connected_mb", "control-plane Pss_Anon, all connected", "MB"),
    ("storm.converged_s", "reconnect storm: restart to all synced", "s"),
    ("storm.p50_s", "reconnect storm: p50 dataplane synced", "s"),
    ("storm.ready_s", "reconnect storm: control plane ready", "s"),
    ("storm.config_changed", "reconnect storm: configs changed", ""),
)


def _fmt(value: float | None, unit: str) -> str:
    return "-" if value is None else t.fmt_value(value, unit) if unit else f"{value:,.2f}".rstrip("0").rstrip(".")


def scale_table(run: CpRun) -> tuple[list[str], list[list[str]]]:
    sizes = sorted({int(k.split(".", 1)[0][1:]) for k in run.figures if k.startswith("n")})
    headers = ["figure", *(f"{n:,} dataplanes" for n in sizes)]
    rows = []
    for key, label, unit in SCALE_ROWS:
        values = [run.figures.get(f"n{n}.{key}") for n in sizes]
        if any(v is not None for v in values):
            rows.append([label, *(_fmt(v, unit) for v in values)])
    return headers, rows


def floor_table(run: CpRun) -> tuple[list[str], list[list[str]]]:
    f = run.figures
    n = f"{f.get('dataplanes', 0):,.0f}"
    rows = [
        ["memory per stream (plaintext)", _fmt(f.get("bare.per_stream_kb"), "KB"), _fmt(f.get("ours.per_stream_kb"), "KB")],
        ["CPU per stream for a route push (ours: render + push + ACK)",
         _fmt(f.get("bare.push_cpu_ms_per_stream"), "ms"), _fmt(f.get("ours.route_cpu_ms_per_dataplane"), "ms")],
        [f"route push to all {n}: p99 until ACKed", _fmt(f.get("bare.push_p99_s"), "s"), _fmt(f.get("ours.route_p99_s"), "s")],
    ]  # fmt: skip
    return ["figure", "bare grpc.aio ADS (floor)", "meshline control plane"], rows


def _table(run: CpRun) -> tuple[list[str], list[list[str]]]:
    if run.key == "cp-scale":
        return scale_table(run)
    if run.key == "cp-floor":
        return floor_table(run)
    return flat_table(run)


def flat_table(run: CpRun) -> tuple[list[str], list[list[str]]]:
    return ["figure", "value"], [[k, f"{v:,.3f}"] for k, v in sorted(run.figures.items())]


def print_controlplane(runs: Mapping[str, CpRun], console: Console) -> None:
    for run in runs.values():
        headers, rows = _table(run)
        table = Table(title=f"{run.label} ({run.seconds:.0f} s)", title_justify="left")
        for i, h in enumerate(headers):
            table.add_column(h, justify="left" if i == 0 else "right")
        for row in rows:
            table.add_row(*row)
        if run.error:
            console.print(f"[red]{run.key} failed: {run.error}[/]")
        console.print(table)


def controlplane_markdown(runs: Mapping[str, CpRun]) -> list[str]:
    lines: list[str] = []
    for run in runs.values():
        lines += ["", f"**{run.label}** ({run.seconds:.0f} s)" + (f": failed: {run.error}" if run.error else ""), ""]
        headers, rows = _table(run)
        lines.append("| " + " | ".join(headers) + " |")
        lines.append("|---|" + "---:|" * (len(headers) - 1))
        lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def append_results_md(
    document: Mapping[str, Any], cp_runs: Mapping[str, CpRun], items: list[Check], *, header: bool,
    path: Path = RESULTS_MD,
) -> None:  # fmt: skip
    """Append the control-plane figures and the targets table (after the data-plane section)."""
    lines: list[str] = []
    if header:
        m = document["machine"]
        lines += [f"## {document['started_at'].replace('T', ' ')} — {document['mode']} mode (control plane)", "",
                  f"Machine: {m['nproc']} × {m['cpu_model']}, kernel {m['kernel']}, Envoy {m['envoy']}, "
                  f"Python {m['python']}."]  # fmt: skip
    if cp_runs:
        lines += ["", "Control plane (`meshline control-plane` with its defaults: SQLite store, token auth, "
                  "xDS over TLS; simulated dataplanes in their own process, see benchmarks/README.md):"]  # fmt: skip
        lines += controlplane_markdown(cp_runs)
    if items:
        lines += ["", "Targets (every figure of the issue, same run):", "", *checks_markdown(items)]
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    path.write_text(text.rstrip("\n") + "\n" + "\n".join(lines) + "\n")
