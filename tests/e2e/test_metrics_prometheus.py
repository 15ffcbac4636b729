"""A real Prometheus server scrapes a running mesh found through the control plane's http_sd
(token-authenticated), and the golden-signal queries documented in docs/observability.md
return what the traffic was: exact request counts, the exact error ratio, a 200 ms delay in
the p50, per-version splits, the caller named on both sides; plus one sidecar's /metrics read
directly, and the control plane's own metrics (connected sidecars, push latency)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from aiohttp import web

from meshline.agent.metrics import parse
from meshline.testing.mesh import MeshHarness, Sidecar, wait_until
from meshline.testing.servers import Behaviour, HttpTestServer, free_port
from tests.unit.test_metrics_dashboards import DASHBOARDS, metric_names

pytestmark = pytest.mark.e2e

TOTAL, FAILING, SLOW = 500, 37, 8
WARMUP_OK, WARMUP_FAIL = 2, 2  # every series exists before the measured traffic (rate() needs two samples)
DELAY = 0.2


def prometheus_binary() -> str:
    found = shutil.which("prometheus") or ("/usr/bin/prometheus" if os.path.exists("/usr/bin/prometheus") else None)
    if found:
        return found
    reason = "the prometheus binary is missing: apt-get install -y prometheus (scripts/test installs it)"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


class FailOrMetricsServer(HttpTestServer):
    """503 under /fail/; Prometheus text at /metrics (the app's own metrics); normal otherwise."""

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/metrics":
            return web.Response(text="# TYPE app_orders_placed_total counter\napp_orders_placed_total 42\n")
        if request.path.startswith("/fail/"):
            self.requests.append({"path": request.path_qs})
            return web.json_response({"instance": self.name}, status=503)
        return await super()._handle(request)


class Prometheus:
    """A real Prometheus on a free loopback port with its own storage, stopped by close()."""

    def __init__(self, work: Path, api_url: str, token: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        work.mkdir(parents=True, exist_ok=True)
        (work / "token").write_text(token)
        api = api_url.split("://", 1)[1]
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
            "scrape_configs": [
                {   # docs/observability.md: "Prometheus configuration"
                    "job_name": "meshline-dataplanes",
                    "honor_labels": True,  # series keep their own mesh label (the same value as the target's)
                    "http_sd_configs": [{
                        "url": f"{api_url}/api/v1/prometheus/targets",
                        "refresh_interval": "1s",
                        # type must be given: Prometheus 2.42's http_sd sends the bare token otherwise
                        "authorization": {"type": "Bearer", "credentials_file": str(work / "token")},
                    }],
                },
                {"job_name": "meshline-control-plane", "static_configs": [{"targets": [api]}]},
            ],
        }
        (work / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = open(work / "prometheus.log", "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [prometheus_binary(), f"--config.file={work / 'prometheus.yml'}",
             f"--storage.tsdb.path={work / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
             "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        wait_until(self._ready, 30, what="Prometheus to be ready")

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"prometheus exited: {Path(self.log.name).read_text()[-2000:]}")
        return httpx.get(self.url + "/-/ready", timeout=2).status_code == 200

    def query(self, promql: str) -> list[dict[str, Any]]:
        r = httpx.get(self.url + "/api/v1/query", params={"query": promql}, timeout=10)
        r.raise_for_status()
        return list(r.json()["data"]["result"])

    def scalar(self, promql: str) -> float | None:
        result = self.query(promql)
        return float(result[0]["value"][1]) if result else None

    def diagnose(self) -> str:
        targets = httpx.get(self.url + "/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
        seen = [(t["labels"].get("job"), t["scrapeUrl"], t["health"], t["lastError"]) for t in targets]
        return f"targets: {seen}\nlog: {Path(self.log.name).read_text()[-2000:]}"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MeshHarness, Sidecar, Prometheus]]:
    binary_check = prometheus_binary()  # skip (or fail in CI) before starting anything
    assert binary_check
    tmp = tmp_path_factory.mktemp("metrics")
    with FailOrMetricsServer("orders-v1") as v1, FailOrMetricsServer("orders-v2") as v2, \
            HttpTestServer("inventory-1", behaviour=Behaviour(delay=DELAY)) as inventory, \
            FailOrMetricsServer("web-1") as web_app:
        spec = {"mtls": {"mode": "strict"}, "defaultPermission": "allow"}
        with MeshHarness(tmp / "mesh", mtls="strict", auth=True, mesh_spec=spec) as mesh:
            mesh.sidecar("orders", v1.port, tags={"version": "v1", "zone": "east"})
            mesh.sidecar("orders", v2.port, tags={"version": "v2", "zone": "west"})
            mesh.sidecar("inventory", inventory.port)
            web = mesh.sidecar("web", web_app.port, upstreams=["orders", "inventory"], tags={"version": "v1"},
                               extra_args=["--app-metrics-url", f"http://127.0.0.1:{web_app.port}/metrics"])
            mesh.wait_in_sync()
            token = mesh.api.request("POST", "/api/v1/tokens", json={"kind": "readonly", "ttl": "1h"})["token"]
            prom = Prometheus(tmp / "prometheus", mesh.api_url, token)
            try:
                yield mesh, web, prom
            finally:
                prom.close()


def send(web: Sidecar, failing: int, ok: int, slow: int, mix: bool = True) -> None:
    with httpx.Client(timeout=10) as client:
        paths = [f"/fail/{i}" for i in range(failing)] + [f"/ok/{i}" for i in range(ok)]
        if mix:  # interleave failures among successes, as real traffic would be
            paths.sort(key=lambda p: hash(p) % 97)
        statuses = [client.get(web.url("orders") + p).status_code for p in paths]
        assert statuses.count(503) == failing and statuses.count(200) == ok
        assert all(client.get(web.url("inventory") + "/x").status_code == 200 for _ in range(slow))


# The documented golden-signal queries (docs/observability.md), with the window filled in.
REQUESTS = 'sum(meshline_requests_total{reporter="source",destination_service="orders"})'
RATE = 'sum(rate(meshline_requests_total{{reporter="source",destination_service="orders"}}[{w}]))'
ERROR_RATIO = (
    'sum(rate(meshline_requests_total{{reporter="source",destination_service="orders",response_code_class="5xx"}}[{w}]))'
    ' / sum(rate(meshline_requests_total{{reporter="source",destination_service="orders"}}[{w}]))'
)
ERROR_RATIO_TOTAL = (
    'sum(meshline_requests_total{reporter="source",destination_service="orders",response_code_class="5xx"})'
    ' / sum(meshline_requests_total{reporter="source",destination_service="orders"})'
)
P50 = ('histogram_quantile(0.5, sum by (le) (rate(meshline_request_duration_seconds_bucket'
       '{{reporter="source",destination_service="inventory"}}[{w}])))')


def test_documented_golden_signal_queries_return_what_the_traffic_was(
    setup: tuple[MeshHarness, Sidecar, Prometheus],
) -> None:
    mesh, web, prom = setup
    assert httpx.get(mesh.api_url + "/api/v1/prometheus/targets").status_code == 401  # needs a token

    def targets_up() -> bool:
        up = prom.query('up{job="meshline-dataplanes"} == 1')
        return len(up) == 4

    try:
        wait_until(targets_up, 20, what="Prometheus to find and scrape the 4 dataplanes through http_sd")
    except TimeoutError as err:
        raise AssertionError(f"{err}\n{prom.diagnose()}") from None
    up = {(r["metric"]["dataplane"], r["metric"]["service"], r["metric"].get("version", ""),
           r["metric"].get("zone", "")) for r in prom.query('up{job="meshline-dataplanes",mesh="default"}')}
    assert up == {("orders-1", "orders", "v1", "east"), ("orders-2", "orders", "v2", "west"),
                  ("inventory-1", "inventory", "", ""), ("web-1", "web", "v1", "")}

    # round robin: two failures in a row, then two successes, reach each version once each
    send(web, WARMUP_FAIL, WARMUP_OK, 1, mix=False)
    warm = WARMUP_OK + WARMUP_FAIL
    wait_until(lambda: prom.scalar(REQUESTS) == warm, 15, what="the warm-up requests in Prometheus")
    series = prom.query('meshline_requests_total{reporter="source",destination_service="orders"}')
    assert {(r["metric"]["destination_version"], r["metric"]["response_code"]) for r in series} == {
        ("v1", "200"), ("v2", "200"), ("v1", "503"), ("v2", "503")}
    start = time.time()
    time.sleep(1.5)  # a scrape inside the query window before the measured traffic
    send(web, FAILING, TOTAL - FAILING, SLOW)
    wait_until(lambda: prom.scalar(REQUESTS) == warm + TOTAL, 15, what=f"{TOTAL} more requests in Prometheus")
    wait_until(lambda: prom.scalar('sum(meshline_request_duration_seconds_count{destination_service="inventory",'
                                   'reporter="source"})') == 1 + SLOW, 15, what="the slow requests' durations")
    w = f"{math.ceil(time.time() - start)}s"

    # Requests: exact on both sides; the destination side names the caller by its certificate.
    assert prom.scalar(REQUESTS) == warm + TOTAL
    assert prom.scalar('sum(meshline_requests_total{reporter="destination",destination_service="orders",'
                       'source_service="web"})') == warm + TOTAL
    assert prom.scalar('sum(meshline_requests_total{reporter="source",destination_service="orders",'
                       'response_code="503",response_code_class="5xx"})') == WARMUP_FAIL + FAILING
    by_version = {r["metric"]["destination_version"]: float(r["value"][1]) for r in prom.query(
        'sum by (destination_version) (meshline_requests_total{reporter="source",destination_service="orders"})')}
    assert set(by_version) == {"v1", "v2"} and sum(by_version.values()) == warm + TOTAL
    assert abs(by_version["v1"] - by_version["v2"]) <= 2  # round robin
    by_zone = {r["metric"]["destination_zone"] for r in prom.query(
        'sum by (destination_zone) (meshline_requests_total{reporter="source",destination_service="orders"})')}
    assert by_zone == {"east", "west"}

    # meshline stat (access logs, counted on the caller's side) agrees with the metrics.
    def stat() -> tuple[int, int] | None:
        orders = [s for s in mesh.api.get("/api/v1/meshes/default/stats")["services"] if s["service"] == "orders"]
        return (orders[0]["total"], orders[0]["totalFailures"]) if orders else None

    wait_until(lambda: stat() == (warm + TOTAL, WARMUP_FAIL + FAILING), 15, what="meshline stat to agree")

    # Error ratio since the sidecars started: exact.
    assert prom.scalar(ERROR_RATIO_TOTAL) == pytest.approx((WARMUP_FAIL + FAILING) / (warm + TOTAL), abs=1e-12)
    # Over a window, the measured failures over the measured requests, within what rate()'s
    # per-series extrapolation to the window's edges allows.
    ratio = prom.scalar(ERROR_RATIO.format(w=w))
    assert ratio is not None and ratio == pytest.approx(FAILING / TOTAL, abs=0.015)
    rate = prom.scalar(RATE.format(w=w))
    assert rate is not None and rate > 0
    # Latency: every inventory request took >= 200 ms, so the p50 estimate is above the delay.
    p50 = prom.scalar(P50.format(w=w))
    assert p50 is not None and DELAY <= p50 <= 0.5


def test_a_sidecars_metrics_endpoint_has_mesh_labels_raw_envoy_stats_and_the_apps_metrics(
    setup: tuple[MeshHarness, Sidecar, Prometheus],
) -> None:
    mesh, web, _ = setup
    before = _web_metrics(mesh, web)
    send(web, 3, 7, 0)
    time.sleep(0.1)
    after = _web_metrics(mesh, web)

    def requests(fams: dict[str, Any], **labels: str) -> float:
        family = fams.get("meshline_requests_total")  # absent until the first request
        return sum(s.value for s in family.samples if labels.items() <= s.labels.items()) if family else 0.0

    edge = {"reporter": "source", "mesh": "default", "source_service": "web", "source_version": "v1",
            "destination_service": "orders", "protocol": "http"}
    assert requests(after, **edge) - requests(before, **edge) == 10
    fails = {**edge, "response_code": "503", "response_code_class": "5xx"}
    assert requests(after, **fails) - requests(before, **fails) == 3
    assert {s.labels["destination_version"] for s in after["meshline_requests_total"].samples
            if s.labels["destination_service"] == "orders"} == {"v1", "v2"}
    assert after["meshline_request_duration_seconds"].type == "histogram"
    assert "envoy_cluster_upstream_rq_total" in after  # Envoy's own stats, by cluster
    assert after["app_orders_placed_total"].samples[0].value == 42  # the app's, merged
    assert after["meshline_dataplane_envoy_up"].samples[0].value == 1


def _web_metrics(mesh: MeshHarness, web: Sidecar) -> dict[str, Any]:
    spec = mesh.api.get(f"/api/v1/meshes/default/dataplanes/{web.name}")["spec"]
    assert spec["metrics"]["path"] == "/metrics"
    text = httpx.get(f"http://127.0.0.1:{spec['metrics']['port']}/metrics", timeout=5).text
    return parse(text)


def test_control_plane_metrics_count_sidecars_and_time_pushes_until_acked(
    setup: tuple[MeshHarness, Sidecar, Prometheus],
) -> None:
    mesh, _, prom = setup
    mesh.apply("""
kind: Timeout
mesh: default
name: orders-timeouts
spec:
  sources: [{match: {service: web}}]
  destinations: [{match: {service: orders}}]
  conf: {http: {requestTimeout: 5s}}
""")
    mesh.wait_in_sync()
    wait_until(lambda: (prom.scalar('sum(meshline_xds_push_latency_seconds_count{mesh="default"})') or 0) >= 1,
               15, what="the push to be timed until ACKed")
    assert (prom.scalar('sum(meshline_xds_pushes_total{mesh="default"})') or 0) >= 1
    assert prom.scalar('meshline_dataplanes_connected{mesh="default"}') == 4
    assert prom.scalar('meshline_dataplanes{mesh="default",state="in-sync"}') == 4
    assert prom.scalar('meshline_xds_nacks_total{mesh="default"}') == 0
    p99 = prom.scalar('histogram_quantile(0.99, sum by (le) (meshline_xds_push_latency_seconds_bucket))')
    assert p99 is not None and 0 < p99 <= 10
    expiries = prom.query('meshline_certificate_expiry_timestamp_seconds{mesh="default"}')
    assert len(expiries) == 4 and all(float(e["value"][1]) > time.time() for e in expiries)
    api = prom.scalar('sum(meshline_api_requests_total{route="/api/v1/prometheus/targets",code="200"})')
    assert api is not None and api >= 1


def test_every_metric_the_dashboards_query_is_scraped(setup: tuple[MeshHarness, Sidecar, Prometheus]) -> None:
    """Envoy's raw names (not derivable from Meshline's code) against the real scrape; the
    meshline_* names too, except TCP ones (this mesh has no TCP service; the unit test checks
    them against the agent's code). It makes its own traffic and push: parallel workers may run
    it apart from the tests above, on a mesh of its own."""
    mesh, web, prom = setup
    send(web, 1, 1, 1)
    mesh.apply("""
kind: Timeout
mesh: default
name: dashboard-check-timeouts
spec:
  sources: [{match: {service: web}}]
  destinations: [{match: {service: inventory}}]
  conf: {http: {requestTimeout: 7s}}
""")
    mesh.wait_in_sync()
    names = set()
    variables = {"$__rate_interval": "1m", "$mesh": "default", "$service": "orders", "$dataplane": "web-1"}
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                names |= metric_names(target["expr"])
                expr = target["expr"]
                for var, value in variables.items():
                    expr = expr.replace(var, value)
                prom.query(expr)  # Prometheus parses and runs every panel's query (raises on an error)
    wanted = {n for n in names if not n.startswith("meshline_tcp_")}
    assert {n for n in names if n.startswith("envoy_")}, "the dataplane dashboard shows some raw Envoy stats"

    # web-1's series carry the target labels from discovery (the request above made them)
    web_series = 'meshline_requests_total{dataplane="web-1",service="web",mesh="default"}'

    def missing() -> set[str]:
        absent = {n for n in wanted if not prom.query(f'count({{__name__="{n}"}})')}
        return absent if prom.query(web_series) else absent | {web_series}

    try:
        wait_until(lambda: not missing(), 20, what="a scrape of every metric the dashboards query")
    except TimeoutError:
        raise AssertionError(f"dashboards query metrics no scrape has: {missing()}\n{prom.diagnose()}") from None
    # no clash with the target labels renamed anything
    assert not prom.query('{exported_mesh!=""}')
