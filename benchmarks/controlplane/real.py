"""Control-plane scenarios with real processes: many real sidecars, start-up, memory against mesh size.

* :func:`many_sidecars`: ``count`` real agents (each starting its Envoy) started together
  against one control plane; time until every Envoy is ready and every dataplane is in sync,
  split into the agents' own start-up (spawn -> Envoy connected) and xDS (connected -> every
  type ACKed).
* :func:`startup`: ``meshline control-plane`` from an empty data dir (and again on the same
  data dir) until its API and xDS ports answer; ``meshline up`` until its demo answers
  through web -> orders -> inventory.
* :func:`mesh_size`: one real workload reaching 5 services, in a mesh of ``small`` and of
  ``large`` services (the others registered, not running): its sidecar's memory, and what
  its Envoy holds (clusters, endpoints) -- only what it reaches must be sent.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import measure, mesh, stats
from benchmarks.controlplane.harness import seed_store
from benchmarks.controlplane.topology import MESH, address, mesh_doc
from benchmarks.procs import ProcessError, ProcessGroup, free_port, free_ports

Progress = Callable[[str], None]


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _in_sync(status: dict[str, Any]) -> bool:
    return bool(status.get("state") == "in-sync")


def many_sidecars(procs: ProcessGroup, workdir: Path, count: int, progress: Progress) -> dict[str, float]:
    """``count`` real sidecars: 10 services, each instance reaching the next two services."""
    cp = mesh.start_control_plane(procs, workdir / "cp")
    services = [f"svc-{i}" for i in range(max(2, min(10, count)))]
    cp.apply({"kind": "TrafficPermission", "mesh": MESH, "name": "all", "spec": {"action": "allow"}})
    tokens = {s: cp.dataplane_token(s) for s in services}
    idle = mesh.IdleApp()
    procs.add_cleanup(idle.close)
    progress(f"starting {count} real sidecars (agent + Envoy each)")
    began_wall, began = time.time(), time.monotonic()
    agents = []
    for i in range(count):
        svc = services[i % len(services)]
        ups = [services[(i + 1) % len(services)], services[(i + 2) % len(services)]]
        agents.append(
            mesh.spawn_agent(
                procs, cp, workdir, name=f"dp-{i}", service=svc, app_port=idle.port,
                upstreams=[u for u in ups if u != svc], token=tokens[svc],
            )  # fmt: skip
        )
    spawned = time.monotonic() - began
    ready = mesh.wait_ready(agents, procs, timeout=300) + spawned
    deadline = time.monotonic() + 120
    statuses: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        statuses = [cp.request("GET", f"/api/v1/meshes/{MESH}/dataplanes/{a.name}")["status"] for a in agents]
        if all(_in_sync(s) for s in statuses):
            break
        time.sleep(0.2)
    synced = time.monotonic() - began
    for a, st in zip(agents, statuses, strict=True):
        if not _in_sync(st):  # say why, for the record
            nack = (st.get("lastNack") or {}).get("message", "")
            progress(f"  {a.name} not in sync: {st.get('state')} {nack[:300]}")
    connected_at = [s.get("connectedAt", 0.0) - began_wall for s in statuses]
    converged_at = [max((t.get("ackedAt", 0.0) for t in s.get("types", {}).values()), default=0.0) - began_wall
                    for s in statuses]  # fmt: skip
    xds = [c2 - c1 for c1, c2 in zip(connected_at, converged_at, strict=True)]
    envoy_mb = [measure.memory(a.envoy_pid()).pss_anon_mb for a in agents]
    agent_mb = [measure.memory(a.pid).pss_anon_mb for a in agents]
    return {
        "sidecars": float(count),
        "in_sync": float(sum(1 for s in statuses if _in_sync(s))),
        "all_ready_s": ready,
        "all_in_sync_s": synced,
        "last_converged_s": max(converged_at),
        "spawn_to_connected_p50_s": stats.distribution(connected_at)["p50"],
        "spawn_to_connected_max_s": max(connected_at),
        "connect_to_converged_p50_s": stats.distribution(xds)["p50"],
        "connect_to_converged_max_s": max(xds),
        "envoy_pss_anon_mb_median": statistics.median(envoy_mb),
        "agent_pss_anon_mb_median": statistics.median(agent_mb),
        "control_plane_mb": measure.memory(cp.pid).pss_anon_mb,
    }


def control_plane_ready(procs: ProcessGroup, data_dir: Path, name: str) -> tuple[float, float, int]:
    """Spawn ``meshline control-plane``; seconds until its API answers and its xDS port accepts."""
    api_port, xds_port = free_port(), free_port()
    began = time.monotonic()
    cp = mesh.start_control_plane(procs, data_dir, name=name, api_port=api_port, xds_port=xds_port)
    api = time.monotonic() - began
    while not _port_open(xds_port):
        procs.check_alive()
        if time.monotonic() - began > 60:
            raise ProcessError("xDS port never opened")
        time.sleep(0.01)
    return api, time.monotonic() - began, cp.pid


def _first_request_through_demo(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        body = json.loads(resp.read() or b"{}")
    except (OSError, ValueError):
        return False
    finally:
        conn.close()
    upstream = body.get("upstream") if isinstance(body, dict) else None
    inner = upstream.get("upstream") if isinstance(upstream, dict) else None
    return resp.status == 200 and isinstance(inner, dict) and inner.get("service") == "inventory"


def meshline_up(procs: ProcessGroup, workdir: Path, timeout: float = 120) -> float:
    """Seconds from running ``meshline up`` to the demo's first answer through web -> orders -> inventory."""
    web = free_ports(5)  # the demo gateway on web, the apps at web+1..web+4
    base = free_ports(3)  # orders' outbound ports at base+1, base+2
    argv = mesh.meshline_argv(
        "up", "--port", str(web), "--outbound-base", str(base), "--data-dir", str(workdir / "up"),
        "--api-address", f"127.0.0.1:{free_port()}", "--xds-address", f"127.0.0.1:{free_port()}",
    )  # fmt: skip
    began = time.monotonic()
    proc = procs.spawn("meshline-up", argv, env={**os.environ, "MESHLINE_DATA_DIR": str(workdir / "up"),
                                                     "MESHLINE_CONFIG": str(workdir / "cli-config.yaml")})
    try:
        while not _first_request_through_demo(web):
            procs.check_alive()
            if time.monotonic() - began > timeout:
                raise ProcessError(f"meshline up: no answer through the demo after {timeout:.0f} s")
            time.sleep(0.05)
        return time.monotonic() - began
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def startup(procs: ProcessGroup, workdir: Path, runs: int, progress: Progress) -> dict[str, float]:
    fresh_api, fresh_xds, again_xds, empty_mb = [], [], [], []
    for run in range(runs):
        progress(f"control-plane start-up {run + 1}/{runs}")
        data_dir = workdir / f"cp-{run}"
        api, xds, pid = control_plane_ready(procs, data_dir, f"cp-fresh-{run}")
        fresh_api.append(api)
        fresh_xds.append(xds)
        time.sleep(1.0)
        empty_mb.append(measure.memory(pid).pss_anon_mb)
        procs.stop(pid)
        _, xds, pid = control_plane_ready(procs, data_dir, f"cp-again-{run}")
        again_xds.append(xds)
        procs.stop(pid)
    progress("meshline up: until the demo answers through the mesh")
    up = [meshline_up(procs, workdir / f"up-{run}") for run in range(max(1, runs // 2))]
    return {
        "cp_ready_fresh_s": statistics.median(fresh_xds),
        "cp_api_fresh_s": statistics.median(fresh_api),
        "cp_ready_again_s": statistics.median(again_xds),
        "cp_empty_mb": statistics.median(empty_mb),
        "up_first_request_s": statistics.median(up),
        "up_first_request_max_s": max(up),
    }


def mesh_size(
    procs: ProcessGroup, workdir: Path, services: int, reach: int, settle: float, progress: Progress
) -> dict[str, float]:
    """A real workload reaching ``reach`` services in a mesh of ``services`` (one instance each)."""
    progress(f"one real sidecar reaching {reach} of {services} services")
    data_dir = workdir / f"cp-{services}"
    docs: list[dict[str, Any]] = [mesh_doc()]
    for i in range(services):
        docs.append({
            "kind": "Dataplane", "mesh": MESH, "name": f"svc-{i}-1",
            "spec": {"address": address(i + 1), "inbound": [
                {"port": 8080, "tags": {"service": f"svc-{i}", "protocol": "http", "version": "v1"}}]},
        })  # fmt: skip
    docs.append({"kind": "TrafficPermission", "mesh": MESH, "name": "all", "spec": {"action": "allow"}})
    seed_store(data_dir, docs)
    cp = mesh.start_control_plane(procs, data_dir, name=f"control-plane-{services}")
    idle = mesh.IdleApp()
    procs.add_cleanup(idle.close)
    step = max(1, services // reach)
    wanted = [f"svc-{i * step}" for i in range(reach)]
    agent = mesh.spawn_agent(procs, cp, workdir, name=f"client-{services}", service="client",
                             app_port=idle.port, upstreams=wanted)  # fmt: skip
    mesh.wait_ready([agent], procs, timeout=120)
    time.sleep(settle)
    envoy_pid = agent.envoy_pid()
    _, clusters_text = agent.admin("/clusters?format=json")
    clusters = json.loads(clusters_text).get("cluster_statuses", [])
    dynamic = [c for c in clusters if c.get("added_via_api")]
    endpoints = sum(len(c.get("host_statuses", [])) for c in dynamic)
    service_clusters = sorted(c["name"] for c in dynamic if c["name"].startswith("svc-"))
    envoy_mb, agent_mb = measure.memory(envoy_pid).pss_anon_mb, measure.memory(agent.pid).pss_anon_mb
    procs.stop(agent.pid, grace=15)
    procs.stop(cp.pid)
    return {
        "services": float(services),
        "envoy_mb": envoy_mb,
        "agent_mb": agent_mb,
        "sidecar_mb": envoy_mb + agent_mb,
        "dynamic_clusters": float(len(dynamic)),
        "service_clusters": float(len(service_clusters)),
        "only_reached": float(service_clusters == sorted(wanted)),
        "unreached_clusters": float(len(set(service_clusters) - set(wanted))),
        "endpoints": float(endpoints),
    }
