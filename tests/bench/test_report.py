"""Medians over rounds, added latency, ratios and the RESULTS.md section, on made-up figures."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from benchmarks import report
from benchmarks.runner import QUICK, ScenarioRun


def _run(key: str, proxies: list[str], rounds: list[dict[str, float]]) -> ScenarioRun:
    return ScenarioRun(key=key, label=f"({key})", description=key, rounds=rounds, proxies=proxies)


def _runs() -> dict[str, ScenarioRun]:
    return {
        "direct": _run(
            "direct",
            [],
            [{"p50_ms": 0.05, "p90_ms": 0.1, "p99_ms": 0.2, "saturation_rps": 60000, "errors": 0}] * 3,
        ),
        "envoy": _run(
            "envoy",
            ["envoy-a", "envoy-b"],
            [
                {
                    "p50_ms": 0.45,
                    "p90_ms": 0.6,
                    "p99_ms": 2.0,
                    "saturation_rps": 6000,
                    "cpu": 0.4,
                    "errors": 1,
                },
                {
                    "p50_ms": 0.55,
                    "p90_ms": 0.7,
                    "p99_ms": 9.0,
                    "saturation_rps": 5000,
                    "cpu": 0.5,
                    "errors": 0,
                },
                {
                    "p50_ms": 0.50,
                    "p90_ms": 0.8,
                    "p99_ms": 3.0,
                    "saturation_rps": 7000,
                    "cpu": 0.3,
                    "errors": 2,
                },
            ],
        ),
        "haproxy": _run(
            "haproxy",
            ["haproxy-a", "haproxy-b"],
            [
                {
                    "p50_ms": 0.25,
                    "p90_ms": 0.35,
                    "p99_ms": 1.2,
                    "saturation_rps": 18000,
                    "cpu": 0.2,
                    "errors": 0,
                }
            ],
        ),
    }


def test_summary_is_median_and_errors_are_summed() -> None:
    envoy = _runs()["envoy"].summary()
    assert envoy["p50_ms"] == 0.5
    assert envoy["p99_ms"] == 3.0  # one noisy round does not move the median
    assert envoy["errors"] == 3


def test_added_latency_and_ratios_against_the_baseline() -> None:
    runs = _runs()
    summary = report.summaries(runs)
    assert round(summary["envoy"]["added_p50_ms"], 6) == 0.45
    assert round(summary["envoy"]["saturation_vs_direct"], 6) == 0.1
    assert report.choose_baseline(runs, None) == "envoy"
    ratios = report.ratios(summary, "envoy")
    assert list(ratios) == ["haproxy/envoy"]
    assert round(ratios["haproxy/envoy"]["saturation_rps"], 6) == 3.0
    assert round(ratios["haproxy/envoy"]["added_p50_ms"], 6) == round(0.2 / 0.45, 6)
    assert round(ratios["haproxy/envoy"]["cpu"], 6) == 0.5


def test_json_and_markdown(tmp_path: Path) -> None:
    runs = _runs()
    machine = {"nproc": 2, "cpu_model": "cpu", "kernel": "k", "python": "3.11", "envoy": "1.40.0",
               "nginx": "1", "haproxy": "2", "wrk": "4", "loadavg_at_start": [0.1, 0.2, 0.3]}  # fmt: skip
    doc = report.build_document(runs, QUICK, machine, dt.datetime.now(dt.UTC), "envoy")
    path = report.write_json(doc, tmp_path / "r.json")
    assert path.read_text().startswith("{")
    md = report.markdown_summary(doc)
    assert "| (envoy) | 0.500 |" in md
    assert "| haproxy/envoy |" in md
    results = tmp_path / "RESULTS.md"
    report.append_results_md(doc, results)
    report.append_results_md(doc, results)
    assert results.read_text().count("— quick mode") == 2
