"""CI smoke tests: ``python -m benchmarks --quick``, every scenario tiny.

They assert that the harness runs end to end and that the JSON holds every figure, plus
what is counted rather than timed (a change only its callers see is pushed only to them,
a restart changes no config, a sidecar gets only the clusters it reaches); never a speed
(CI machines are noisy and shared).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.bench.support import require_programs

ROOT = Path(__file__).resolve().parents[2]
LATENCY = ("p50_ms", "p90_ms", "p99_ms", "p99.9_ms", "max_ms")


def quick(tmp_path: Path, *scenarios: str, timeout: float = 180) -> tuple[dict[str, Any], str]:
    out = tmp_path / "quick.json"
    argv = [sys.executable, "-m", "benchmarks", "--quick", "--json", str(out)]
    for key in scenarios:
        argv += ["-s", key]
    proc = subprocess.run(
        argv,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(out.read_text()), proc.stdout


def test_quick_direct_and_envoy(tmp_path: Path) -> None:
    require_programs("gcc", "nginx", "wrk", "envoy")
    doc, stdout = quick(tmp_path, "direct", "envoy")

    assert doc["mode"] == "quick"
    for key in ("nproc", "cpu_model", "kernel", "envoy", "python"):
        assert doc["machine"][key], key
    direct = doc["scenarios"]["direct"]["summary"]
    envoy = doc["scenarios"]["envoy"]["summary"]
    for figures in (direct, envoy):
        for key in (*LATENCY, "achieved_rps", "saturation_rps"):
            assert figures[key] > 0, key
        assert figures["errors"] == 0
    assert doc["scenarios"]["envoy"]["proxies"] == ["envoy-a", "envoy-b"]
    for key in ("added_p50_ms", "added_p90_ms", "added_p99_ms", "saturation_vs_direct"):
        assert key in envoy, key
    for role in ("envoy-a", "envoy-b"):
        assert envoy[f"cpu.{role}"] > 0
        assert envoy[f"cpu_sat.{role}"] > 0
        assert envoy[f"pss_anon_mb.{role}"] > 1  # Envoy's private memory is ~15 MB
        assert envoy[f"private_dirty_mb.{role}"] > 1
    assert "cpu" not in direct  # no proxy, nothing to measure
    assert "Latency (ms)" in stdout  # the rich table was printed


def test_quick_meshline_data_plane(tmp_path: Path) -> None:
    """(b): real control plane and agents, strict mTLS (the scenario refuses plaintext)."""
    require_programs("gcc", "nginx", "wrk", "envoy")
    doc, _ = quick(tmp_path, "direct", "meshline", "envoy")
    figures = doc["scenarios"]["meshline"]["summary"]
    for key in (*LATENCY, "saturation_rps", "sidecar_cpu_max", "sidecar_pss_anon_mb_max"):
        assert figures[key] > 0, key
    assert figures["errors"] == 0
    assert doc["scenarios"]["meshline"]["proxies"] == ["agent-client", "envoy-client", "agent-app", "envoy-app"]
    assert figures["pss_anon_mb.control-plane"] > 1  # measured, but not a sidecar
    targets = {t["figure"]: t for t in doc["targets"]}
    assert "saturation throughput, meshline / envoy pair" in targets


def test_quick_control_plane_simulated(tmp_path: Path) -> None:
    """50 simulated dataplanes: propagation, a scoped change, churn, memory, reconnect storm."""
    doc, stdout = quick(tmp_path, "cp-scale")
    run = doc["controlplane"]["cp-scale"]
    assert run["error"] is None, run
    f = run["figures"]
    for kind in ("route_all", "route_some", "new_service", "service_removed"):
        assert f[f"n50.{kind}.timed_out"] == 0, kind
        assert f[f"n50.{kind}.pushed"] == f[f"n50.{kind}.expected"] > 0, kind
        assert f[f"n50.{kind}.p99_s"] > 0, kind
    assert f["n50.route_some.expected"] < 50  # only its callers...
    assert f["n50.route_some.extra_pushes"] == 0  # ...and nobody else was pushed
    # a new service changes its callers' listeners in the first round (tcp -> http); in the next,
    # the service's callers kept its last known protocol while it was gone: no listener changes
    assert f["n50.new_service.pushes_per_round.LDS"] == 50 / 2
    assert f["n50.churn.changes"] > 10 and f["n50.churn.eds_pushes_per_s"] > 0
    assert f["n50.storm.synced"] == 50 and f["n50.storm.config_changed"] == 0
    assert f["n50.cp_connected_mb"] > f["cp_empty_mb"] > 1
    assert any(t["figure"].startswith("reconnect storm") for t in doc["targets"])
    assert "control plane at scale" in stdout


def test_quick_control_plane_real_sidecars(tmp_path: Path) -> None:
    """Real sidecars at once, start-up (control plane, meshline up), memory against mesh size; the
    floor (a bare grpc.aio ADS server beside ours)."""
    require_programs("envoy")
    doc, _ = quick(tmp_path, "cp-sidecars", "cp-startup", "mesh-size", "cp-floor")
    runs = doc["controlplane"]
    for key in ("cp-sidecars", "cp-startup", "mesh-size", "cp-floor"):
        assert runs[key]["error"] is None, runs[key]
    floor = runs["cp-floor"]["figures"]
    assert floor["bare.streams"] == 50
    assert floor["bare.per_stream_kb"] > 0 and floor["ours.per_stream_kb"] > 0
    sidecars = runs["cp-sidecars"]["figures"]
    assert sidecars["in_sync"] == sidecars["sidecars"] == 3
    startup = runs["cp-startup"]["figures"]
    assert startup["cp_ready_fresh_s"] > 0 and startup["up_first_request_s"] > 0
    size = runs["mesh-size"]["figures"]
    for services in (10, 50):
        assert size[f"m{services}.service_clusters"] == 5  # the 5 it reaches...
        assert size[f"m{services}.unreached_clusters"] == 0  # ...and none of the others
        assert size[f"m{services}.envoy_mb"] > 1


def test_quick_transparent_against_explicit(tmp_path: Path) -> None:
    """Two sidecars across two test hosts, explicit and transparent, one tiny round each."""
    from meshline.testing.netns import require_netns

    require_netns("nft")
    require_programs("envoy", "wrk", "nginx")
    doc, _ = quick(tmp_path, "transparent")
    run = doc["controlplane"]["transparent"]
    assert run["error"] is None, run
    f = run["figures"]
    assert f["explicit.rps"] > 0 and f["transparent.rps"] > 0
    assert f["ratio.rps"] > 0 and f["transparent.c1_p50_ms"] > 0
    assert any(t["figure"].startswith("transparent / explicit") for t in doc["targets"])


def test_quick_gateway_against_a_handwritten_front_proxy(tmp_path: Path) -> None:
    """The ingress gateway and a static Envoy, same TLS termination, one tiny round per phase."""
    from meshline.testing.netns import require_netns

    require_netns()
    require_programs("envoy", "wrk", "nginx")
    doc, _ = quick(tmp_path, "gateway")
    run = doc["controlplane"]["gateway"]
    assert run["error"] is None, run
    f = run["figures"]
    for prefix in ("", "nostream."):
        assert f[f"{prefix}gateway.rps"] > 0 and f[f"{prefix}handwritten.rps"] > 0
        assert f[f"{prefix}ratio.rps"] > 0
    assert any(t["figure"].startswith("gateway (mesh defaults) / hand-written") for t in doc["targets"])
