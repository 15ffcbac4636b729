"""Turn scenario runs into a terminal table, a JSON file and a RESULTS.md entry."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks.runner import NOISY_LAG_MS, RunSettings, ScenarioRun

DIRECT = "direct"
RESULTS_DIR = Path(__file__).with_name("results")
RESULTS_MD = Path(__file__).with_name("RESULTS.md")

# (figure, heading) pairs compared as "scenario / baseline"
RATIO_FIGURES: tuple[tuple[str, str], ...] = (
    ("added_p50_ms", "added p50"),
    ("added_p90_ms", "added p90"),
    ("added_p99_ms", "added p99"),
    ("saturation_rps", "saturation req/s"),
    ("cpu", "proxy vCPU per 1k req/s @1k"),
    ("cpu_sat", "proxy vCPU per 1k req/s saturated"),
    ("pss_anon_mb", "proxy Pss_Anon MB"),
)


def summaries(runs: Mapping[str, ScenarioRun]) -> dict[str, dict[str, float]]:
    """Each scenario's median figures plus what is relative to the direct scenario."""
    out = {key: run.summary() for key, run in runs.items() if run.rounds}
    direct = out.get(DIRECT)
    if direct is None:
        return out
    for figures in out.values():
        for pct in ("p50", "p90", "p99"):
            name = f"{pct}_ms"
            if name in figures and name in direct:
                figures[f"added_{name}"] = figures[name] - direct[name]
        if figures.get("saturation_rps") and direct.get("saturation_rps"):
            figures["saturation_vs_direct"] = figures["saturation_rps"] / direct["saturation_rps"]
    return out


def choose_baseline(runs: Mapping[str, ScenarioRun], wanted: str | None) -> str | None:
    """The scenario ratios are taken against: ``wanted``, else "envoy", else the first proxy."""
    proxied = [k for k, r in runs.items() if r.rounds and r.proxies]
    if wanted in proxied:
        return wanted
    if "envoy" in proxied:
        return "envoy"
    return proxied[0] if proxied else None


def ratios(summary: Mapping[str, Mapping[str, float]], baseline: str | None) -> dict[str, dict[str, float]]:
    """``{"<scenario>/<baseline>": {figure: ratio}}`` for every other scenario with proxies."""
    if baseline is None or baseline not in summary:
        return {}
    base = summary[baseline]
    out: dict[str, dict[str, float]] = {}
    for key, figures in summary.items():
        if key in (baseline, DIRECT):
            continue
        pair: dict[str, float] = {}
        for name, _heading in RATIO_FIGURES:
            value, reference = figures.get(name), base.get(name)
            # A ratio of differences is meaningless once noise makes one of them <= 0.
            if value is not None and reference is not None and value > 0 and reference > 0:
                pair[name] = value / reference
        out[f"{key}/{baseline}"] = pair
    return out


def noise_warnings(document: Mapping[str, Any]) -> list[str]:
    """Say when the generator itself was late: then the machine was busy and tails are noise."""
    noisy = [
        f"{s['label']} {s['summary']['loadgen_lag_p99_ms']:.2f} ms"
        for s in document["scenarios"].values()
        if s["summary"].get("loadgen_lag_p99_ms", 0) > NOISY_LAG_MS
    ]
    if not noisy:
        return []
    return [
        f"the load generator's own send lag p99 exceeded {NOISY_LAG_MS} ms ({', '.join(noisy)}): "
        "other work competed for the CPUs, so p99 and above (and saturation) are unreliable"
    ]


def fmt_ms(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) < 1:
        return f"{value:.3f}"
    if abs(value) < 10:
        return f"{value:.2f}"
    return f"{value:.1f}"


def fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def build_document(
    runs: Mapping[str, ScenarioRun],
    settings: RunSettings,
    machine: Mapping[str, object],
    started: dt.datetime,
    baseline: str | None,
) -> dict[str, Any]:
    summary = summaries(runs)
    return {
        "schema": 1,
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "mode": settings.mode,
        "settings": asdict(settings),
        "machine": dict(machine),
        "baseline": baseline,
        "scenarios": {
            key: {
                "label": run.label,
                "description": run.description,
                "proxies": run.proxies,
                "skipped": run.skipped,
                "summary": summary.get(key, {}),
                "rounds": run.rounds,
                "discarded_noisy_rounds": run.discarded,
                "details": run.details,
            }
            for key, run in runs.items()
        },
        "ratios": ratios(summary, baseline),
    }


def write_json(document: Mapping[str, Any], path: Path | None = None) -> Path:
    if path is None:
        stamp = document["started_at"].replace(":", "").replace("-", "").replace("+0000", "Z")
        path = RESULTS_DIR / f"{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")
    return path


def _main_rows(document: Mapping[str, Any]) -> list[tuple[str, dict[str, float], str | None]]:
    return [(s["label"], s["summary"], s["skipped"]) for s in document["scenarios"].values()]


def print_tables(document: Mapping[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    settings = document["settings"]
    rows = _main_rows(document)
    latency = Table(
        title=f"Latency (ms) at {settings['rate']:,.0f} req/s fixed rate, {settings['connections']} connections, "
        f"from intended send time ({document['mode']}, median of {settings['rounds']} round(s))",
        title_justify="left",
    )
    latency.add_column("scenario")
    for heading in ("p50", "p90", "p99", "p99.9", "max", "+p50", "+p90", "+p99", "gen. lag p99"):
        latency.add_column(heading, justify="right")
    cost = Table(title="Throughput and proxy cost", title_justify="left")
    cost.add_column("scenario")
    for heading in ("saturation req/s", "vs direct", "vCPU/1k @1k", "vCPU/1k sat.", "Pss_Anon MB", "errors"):
        cost.add_column(heading, justify="right")
    for label, f, skipped in rows:
        if skipped:
            latency.add_row(label, f"skipped: {skipped}", *[""] * 8)
            continue
        latency.add_row(
            label,
            *(fmt_ms(f.get(k)) for k in ("p50_ms", "p90_ms", "p99_ms", "p99.9_ms", "max_ms")),
            *(fmt_ms(f.get(k)) for k in ("added_p50_ms", "added_p90_ms", "added_p99_ms")),
            fmt_ms(f.get("loadgen_lag_p99_ms")),
        )
        sat_rel = f.get("saturation_vs_direct")
        cost.add_row(
            label,
            fmt(f.get("saturation_rps")),
            f"{sat_rel:.0%}" if sat_rel is not None else "-",
            fmt(f.get("cpu"), 3) if "cpu" in f else "-",
            fmt(f.get("cpu_sat"), 3) if "cpu_sat" in f else "-",
            fmt(f.get("pss_anon_mb"), 1) if "pss_anon_mb" in f else "-",
            fmt((f.get("errors") or 0) + (f.get("wrk_errors") or 0)),
        )
    console.print(latency)
    console.print(cost)
    for warning in noise_warnings(document):
        console.print(f"[yellow]warning: {warning}[/]")

    procs = Table(title="Per proxy process", title_justify="left")
    for heading in (
        "scenario",
        "process",
        "vCPU/1k @1k",
        "vCPU/1k sat.",
        "Pss_Anon MB",
        "Priv_Dirty MB",
        "RSS MB",
    ):
        procs.add_column(heading, justify="left" if heading in ("scenario", "process") else "right")
    for scenario in document["scenarios"].values():
        f = scenario["summary"]
        for role in scenario["proxies"]:
            procs.add_row(
                scenario["label"],
                role,
                fmt(f.get(f"cpu.{role}"), 3),
                fmt(f.get(f"cpu_sat.{role}"), 3),
                fmt(f.get(f"pss_anon_mb.{role}"), 1),
                fmt(f.get(f"private_dirty_mb.{role}"), 1),
                fmt(f.get(f"rss_mb.{role}"), 1),
            )
    if procs.row_count:
        console.print(procs)

    if document["ratios"]:
        rt = Table(title=f"Ratios against {document['baseline']} (same run)", title_justify="left")
        rt.add_column("figure")
        for pair in document["ratios"]:
            rt.add_column(pair, justify="right")
        for name, heading in RATIO_FIGURES:
            rt.add_row(heading, *(fmt_ratio(values.get(name)) for values in document["ratios"].values()))
        console.print(rt)


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def markdown_summary(document: Mapping[str, Any]) -> str:
    """A dated RESULTS.md section: machine, settings, the main table and the ratios."""
    m = document["machine"]
    s = document["settings"]
    lines = [
        f"## {document['started_at'].replace('T', ' ')} — {document['mode']} mode",
        "",
        f"Machine: {m['nproc']} × {m['cpu_model']}, kernel {m['kernel']}, Envoy {m['envoy']}, "
        f"Python {m['python']}, nginx {m['nginx']}, HAProxy {m['haproxy']}, wrk {m['wrk']}. "
        f"Load average at start: {_loadavg(m.get('loadavg_at_start'))}; at end: {_loadavg(m.get('loadavg_at_end'))}.",
        "",
        f"Settings: {s['rate']:,.0f} req/s fixed rate for {s['fixed_seconds']:g} s (after {s['warmup_seconds']:g} s "
        f"warm-up), wrk {s['saturation_seconds']:g} s with {s['wrk_threads']} thread; {s['connections']} "
        f"keep-alive connections; HTTP/1.1 GET, 1 KB body; median of {s['rounds']} interleaved round(s). "
        "Latencies in ms from the intended send time; +pXX = added over direct; CPU = vCPU per 1,000 req/s "
        "summed over the proxy processes; memory = Pss_Anon summed over the proxy processes; gen. lag p99 = how "
        "late the load generator itself sent (machine noise: when it is high, so are the tails).",
        "",
        "| scenario | p50 | p90 | p99 | p99.9 | +p50 | +p90 | +p99 | saturation req/s | vCPU/1k @1k "
        "| vCPU/1k saturated | Pss_Anon MB | errors | gen. lag p99 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, f, skipped in _main_rows(document):
        if skipped:
            lines.append(f"| {label} | skipped: {skipped} |" + " |" * 12)
            continue
        sat_rel = f.get("saturation_vs_direct")
        sat = fmt(f.get("saturation_rps")) + (f" ({sat_rel:.0%})" if sat_rel is not None else "")
        cells = [
            *(fmt_ms(f.get(k)) for k in ("p50_ms", "p90_ms", "p99_ms", "p99.9_ms")),
            *(fmt_ms(f.get(k)) for k in ("added_p50_ms", "added_p90_ms", "added_p99_ms")),
            sat,
            fmt(f.get("cpu"), 3) if "cpu" in f else "-",
            fmt(f.get("cpu_sat"), 3) if "cpu_sat" in f else "-",
            fmt(f.get("pss_anon_mb"), 1) if "pss_anon_mb" in f else "-",
            fmt((f.get("errors") or 0) + (f.get("wrk_errors") or 0)),
            fmt_ms(f.get("loadgen_lag_p99_ms")),
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    busy = [
        r["machine_busy_before"]
        for s in document["scenarios"].values()
        for r in s["rounds"]
        if "machine_busy_before" in r
    ]
    discarded = sum(len(s.get("discarded_noisy_rounds", [])) for s in document["scenarios"].values())
    if busy:
        lines += [
            "",
            f"Machine busy with other work before a round: at most {max(busy):.0%}. "
            f"Rounds redone because the generator lagged (busy machine): {discarded}.",
        ]
    for warning in noise_warnings(document):
        lines += ["", f"**Warning:** {warning}."]
    if document["ratios"]:
        lines += ["", f"Ratios against {document['baseline']}:", ""]
        pairs = list(document["ratios"])
        lines.append("| figure | " + " | ".join(pairs) + " |")
        lines.append("|---|" + "---:|" * len(pairs))
        for name, heading in RATIO_FIGURES:
            lines.append(
                f"| {heading} | "
                + " | ".join(fmt_ratio(document["ratios"][p].get(name)) for p in pairs)
                + " |"
            )
    return "\n".join(lines) + "\n"


def _loadavg(values: object) -> str:
    if not isinstance(values, list):
        return "?"
    return ", ".join(f"{x:.2f}" for x in values)


def append_results_md(document: Mapping[str, Any], path: Path = RESULTS_MD) -> None:
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    path.write_text(text.rstrip("\n") + "\n\n" + markdown_summary(document))
