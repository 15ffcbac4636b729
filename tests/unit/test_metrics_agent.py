"""The agent's metrics endpoint over real sockets (an aiohttp stand-in for Envoy's admin and the
app), its options, and what it registers."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from meshline.agent.config import AgentConfig, Upstream, check_config, dataplane_doc
from meshline.agent.metrics import MetricsService, check_app_metrics_url, parse, service_for
from meshline.cli.agent import build_config
from meshline.core.dataplane import DataplaneSpec
from meshline.core.errors import MeshlineError
from meshline.core.schema import parse_spec

ENVOY = """# TYPE envoy_meshline_requests counter
envoy_meshline_requests{reporter="source",mesh="default",source_service="web",destination_service="orders",\
protocol="http",destination_version="v1",destination_zone="",response_code="200"} 7
# TYPE envoy_server_live gauge
envoy_server_live{} 1
"""
APP = "# TYPE app_jobs_total counter\napp_jobs_total 3\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config(tmp_path: Path, **kw: Any) -> AgentConfig:
    base: dict[str, Any] = dict(
        mesh="default", name="web-1", service="web", address="127.0.0.1", app_port=8080,
        inbound_port=18080, work_dir=tmp_path, api_url="http://127.0.0.1:15681",
        xds_host="127.0.0.1", xds_port=15678, upstreams=[Upstream("orders", 15001)], metrics_port=free_port(),
    )
    base.update(kw)
    return AgentConfig(**base)


async def serve(where: int | Path, path: str, text: str) -> web.AppRunner:
    """An HTTP endpoint on a loopback port, or on a Unix socket (Envoy's admin API)."""
    app = web.Application()

    async def handle(request: web.Request) -> web.Response:
        return web.Response(text=text)

    app.router.add_get(path, handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.UnixSite(runner, str(where)) if isinstance(where, Path) else web.TCPSite(runner, "127.0.0.1", where)
    await site.start()
    return runner


async def test_scrape_translates_envoy_and_merges_the_app(tmp_path: Path) -> None:
    app_port = free_port()
    cfg = config(tmp_path, app_metrics_url=f"http://127.0.0.1:{app_port}/metrics")
    envoy = await serve(cfg.admin_socket, "/stats/prometheus", ENVOY)
    app = await serve(app_port, "/metrics", APP)
    (svc,) = service_for(cfg)
    assert isinstance(svc, MetricsService)
    await svc.start(cfg)
    try:
        async with httpx.AsyncClient() as client:
            resp = await client.get(f"http://127.0.0.1:{cfg.metrics_port}/metrics")
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain; version=0.0.4")
        fams = parse(resp.text)
        (req,) = fams["meshline_requests_total"].samples
        assert req.value == 7 and req.labels["destination_version"] == "v1" and req.labels["response_code_class"] == "2xx"
        assert fams["envoy_server_live"].samples[0].value == 1
        assert fams["app_jobs_total"].samples[0].value == 3
        assert fams["meshline_dataplane_envoy_up"].samples[0].value == 1
        assert fams["meshline_dataplane_app_metrics_up"].samples[0].value == 1
        # Envoy and the app gone: the scrape still answers, and says so
        await envoy.cleanup()
        await app.cleanup()
        fams = parse(await svc.scrape())
        assert fams["meshline_dataplane_envoy_up"].samples[0].value == 0
        assert fams["meshline_dataplane_app_metrics_up"].samples[0].value == 0
        assert "meshline_requests_total" not in fams
    finally:
        await svc.stop()


async def test_a_taken_port_is_a_clear_error(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", cfg.metrics_port or 0))
        taken.listen()
        svc = MetricsService(cfg.metrics_port or 0)
        with pytest.raises(MeshlineError, match="--metrics-port"):
            await svc.start(cfg)


def test_registered_dataplane_records_the_endpoint(tmp_path: Path) -> None:
    cfg = config(tmp_path, metrics_port=19090)
    doc = dataplane_doc(cfg)
    assert doc["spec"]["metrics"] == {"port": 19090, "path": "/metrics"}
    spec = parse_spec(DataplaneSpec, doc["spec"])
    assert spec.metrics is not None and spec.metrics.port == 19090
    assert "metrics" not in dataplane_doc(config(tmp_path, metrics_port=None))["spec"]
    assert service_for(config(tmp_path, metrics_port=None)) == []
    with pytest.raises(MeshlineError, match="--metrics-port 18080 is also the --inbound-port"):
        check_config(config(tmp_path, metrics_port=18080))


def _opts(tmp_path: Path, **kw: Any) -> dict[str, Any]:
    return dict(
        service="web", app_port=8080, mesh="default", name="web-1", api="http://127.0.0.1:15681", token="t",
        token_file=None, ca_file=None, xds_address=None, address="127.0.0.1", inbound_port=18080,
        protocol="http", tags=(), upstreams=(), work_dir=tmp_path, envoy_concurrency=1,
        envoy_log_level="warn", envoy_binary=None, drain_seconds=1.0, register_timeout=30.0, ready_timeout=60.0,
        metrics_port=None, app_metrics_url=None,
    ) | kw


def test_cli_options(tmp_path: Path) -> None:
    assert (build_config(_opts(tmp_path)).metrics_port or 0) > 0  # a free port by default
    assert build_config(_opts(tmp_path, metrics_port=0)).metrics_port is None  # 0: none
    cfg = build_config(_opts(tmp_path, metrics_port=9102, app_metrics_url="http://127.0.0.1:8080/metrics"))
    assert (cfg.metrics_port, cfg.app_metrics_url) == (9102, "http://127.0.0.1:8080/metrics")
    assert any(isinstance(s, MetricsService) for s in cfg.local_services)
    for bad in ("127.0.0.1:8080/metrics", "ftp://x/metrics", "http:///metrics"):
        with pytest.raises(MeshlineError, match="--app-metrics-url"):
            check_app_metrics_url(bad)
