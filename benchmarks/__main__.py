"""``python -m benchmarks``: data-plane overhead and control-plane scale, side by side (see README.md)."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import sys
import tempfile
from pathlib import Path

from rich.console import Console

from benchmarks import controlplane, machine, profile, report, runner, selfcheck, summary, tools
from benchmarks.procs import install_signal_handlers
from benchmarks.scenarios import SCENARIOS

ALL_KEYS = [*SCENARIOS, *controlplane.SCENARIOS]
DEFAULT_KEYS = [*(k for k, s in SCENARIOS.items() if s.default), *controlplane.SCENARIOS]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Measure data-plane overhead (fixed-rate latency (open loop), saturation "
        "throughput (wrk), proxy CPU and private memory) for each scenario in the same run, then "
        "the control plane (propagation, churn, memory, reconnect storm, real sidecars, start-up).",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="tiny runs (a few seconds per scenario), for CI")
    mode.add_argument(
        "--selfcheck", action="store_true", help="check the load generator's accuracy and stall detection"
    )
    mode.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument(
        "-s", "--scenario", action="append", choices=ALL_KEYS, metavar="NAME",
        help=f"run only these (repeatable; default: {', '.join(DEFAULT_KEYS)}; also: "
        f"{', '.join(k for k in ALL_KEYS if k not in DEFAULT_KEYS)})",
    )  # fmt: skip
    parser.add_argument("--rounds", type=int, help="interleaved rounds; figures are the median over rounds")
    parser.add_argument("--seconds", type=float, help="measured seconds of the fixed-rate run")
    parser.add_argument("--warmup", type=float, help="unrecorded seconds before them")
    parser.add_argument("--saturation-seconds", type=float, help="wrk duration (0 skips the saturation run)")
    parser.add_argument("--rate", type=float, help="fixed rate in req/s (default 1000)")
    parser.add_argument("--connections", type=int, help="keep-alive connections (default 16)")
    parser.add_argument("--wrk-threads", type=int, help="wrk threads (default 1)")
    parser.add_argument("--baseline", choices=list(SCENARIOS), help="scenario the ratios are taken against")
    parser.add_argument("--json", type=Path, help="write JSON here instead of benchmarks/results/<time>.json")
    parser.add_argument(
        "--record", action=argparse.BooleanOptionalAction, default=None,
        help="append a summary to benchmarks/RESULTS.md (default: on in full mode, off with --quick)",
    )  # fmt: skip
    parser.add_argument(
        "--quiet-timeout", type=float,
        help="before each round, wait up to this many seconds for other work to leave the CPUs "
        "(default 300 in full mode, 0 with --quick)",
    )  # fmt: skip
    parser.add_argument(
        "--skip-missing", action="store_true", help="skip scenarios whose programs are missing"
    )
    parser.add_argument(
        "--dataplanes", type=int, action="append", metavar="N",
        help="cp-scale: simulated dataplanes per session (repeatable; default 1000 and 5000, --quick 50)",
    )  # fmt: skip
    parser.add_argument("--churn-seconds", type=float, help="cp-scale: how long the endpoint churn lasts")
    parser.add_argument("--sidecars", type=int, help="cp-sidecars: real sidecars started at once (default 50)")
    parser.add_argument(
        "--cp-source", type=Path, metavar="DIR",
        help="cp-scale: run the control plane from this source tree (a dir holding a meshline package), "
        "e.g. an older version, for before/after figures",
    )  # fmt: skip
    parser.add_argument(
        "--profile", nargs="?", type=Path, const=profile.PROFILES, metavar="DIR",
        help="cp-scale: py-spy the control plane during the changes and the storm (default dir "
        "benchmarks/profiles)",
    )  # fmt: skip
    return parser.parse_args(argv)


def cp_settings_from(args: argparse.Namespace) -> controlplane.CpSettings:
    base = controlplane.QUICK if args.quick else controlplane.FULL
    scale = base.scale
    if args.dataplanes:
        sizes = tuple(args.dataplanes)
        churn = scale.churn_size if scale.churn_size in sizes else sizes[0]
        scale = dataclasses.replace(scale, sizes=sizes, churn_size=churn)
    if args.churn_seconds is not None:
        scale = dataclasses.replace(scale, churn_seconds=args.churn_seconds)
    if args.profile is not None:
        scale = dataclasses.replace(scale, profile_dir=args.profile)
    if args.cp_source is not None:
        scale = dataclasses.replace(scale, cp_source=args.cp_source.resolve())
    out = dataclasses.replace(base, scale=scale)
    if args.rounds:
        out = dataclasses.replace(out, scale=dataclasses.replace(out.scale, rounds=args.rounds))
    if args.sidecars:
        out = dataclasses.replace(out, sidecars=args.sidecars)
    return out


def settings_from(args: argparse.Namespace) -> runner.RunSettings:
    base = runner.QUICK if args.quick else runner.FULL
    overrides = {
        "rounds": args.rounds,
        "fixed_seconds": args.seconds,
        "warmup_seconds": args.warmup,
        "saturation_seconds": args.saturation_seconds,
        "rate": args.rate,
        "connections": args.connections,
        "wrk_threads": args.wrk_threads,
        "quiet_timeout": args.quiet_timeout,
    }
    return dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, 120)  # CI logs: keep table rows on one line
    install_signal_handlers()
    if args.list:
        for scenario in SCENARIOS.values():
            console.print(f"{scenario.key:12} {scenario.label:24} {scenario.description}")
        for cp in controlplane.SCENARIOS.values():
            console.print(f"{cp.key:12} {cp.label:24} {cp.description}")
        return 0
    if args.selfcheck:
        checks = selfcheck.run(console=console)
        return 0 if all(c.ok for c in checks) else 1

    settings = settings_from(args)
    cp_settings = cp_settings_from(args)
    keys = args.scenario or DEFAULT_KEYS
    chosen = [SCENARIOS[key] for key in keys if key in SCENARIOS]
    cp_chosen = [controlplane.SCENARIOS[key] for key in keys if key in controlplane.SCENARIOS]
    if chosen and report.DIRECT not in {s.key for s in chosen}:
        console.print("[yellow]note: without the direct scenario there is no 'added latency'[/]")
    started = dt.datetime.now(dt.UTC)
    info = machine.describe()

    def progress(message: str) -> None:
        console.print(f"[dim]{message}[/]")

    try:
        runs = runner.run_all(chosen, settings, skip_missing=args.skip_missing, progress=progress) if chosen else {}
        cp_runnable = []
        for cp in cp_chosen:
            missing = [name for name in cp.requires if tools.find(name) is None]
            if missing and not args.skip_missing:
                raise tools.MissingTool(f"{cp.key}: missing {', '.join(missing)} (or pass --skip-missing)")
            if missing:
                progress(f"skip {cp.key}: missing {', '.join(missing)}")
            else:
                cp_runnable.append(cp)
        with tempfile.TemporaryDirectory(prefix="meshline-bench-cp-") as tmp:
            cp_runs = controlplane.run_all(
                cp_runnable, cp_settings, Path(tmp), progress, lambda: runner.wait_for_quiet(settings, progress)
            )
    except tools.MissingTool as exc:
        console.print(f"[red]{exc}[/]")
        return 2
    except KeyboardInterrupt:
        console.print("[red]interrupted: every process stopped[/]")
        return 130
    info["loadavg_at_end"] = list(os.getloadavg())
    document = report.build_document(
        runs, settings, info, started, report.choose_baseline(runs, args.baseline)
    )
    document["controlplane"] = {key: run.to_json() for key, run in cp_runs.items()}
    document["controlplane_settings"] = json.loads(json.dumps(dataclasses.asdict(cp_settings), default=str))
    verdicts = summary.all_checks(document, cp_runs)
    document["targets"] = [c.to_json() for c in verdicts]
    if runs:
        report.print_tables(document, console)
    summary.print_controlplane(cp_runs, console)
    summary.print_checks(verdicts, console)
    path = report.write_json(document, args.json)
    console.print(f"JSON: {path}")
    record = args.record if args.record is not None else not args.quick
    if record:
        if runs:
            report.append_results_md(document)
        summary.append_results_md(document, cp_runs, verdicts, header=not runs)
        console.print(f"appended to {report.RESULTS_MD}")
    failed = [run.key for run in cp_runs.values() if run.error]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
