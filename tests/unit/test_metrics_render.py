"""The render step that counts HTTP requests on every sidecar, and the Dataplane metrics field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.access_loggers.filters.cel.v3 import cel_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from google.protobuf import json_format
from xds.type.v3 import typed_struct_pb2

from meshline.agent.metrics import stats_config
from meshline.core.errors import ValidationError
from meshline.kinds import default_kinds
from meshline.policies import plugins
from meshline.render import metrics as step
from meshline.render.mesh_snapshot import MeshSnapshot
from meshline.render.render import RenderResult, render
from meshline.testing.golden import load_resources
from meshline.testing.policy_kit import envoy_accepts, static_bootstrap, validate
from meshline.xds.snapshot import LISTENER

MESH = """
kind: Mesh
name: default
spec: {mtls: {mode: disabled}}
---
kind: Dataplane
mesh: default
name: web-1
spec:
  address: 127.0.0.1
  inbound: [{port: 18080, servicePort: 8080, tags: {service: web, version: v9, zone: z1, protocol: http}}]
  outbound:
  - {port: 15001, service: orders}
  - {port: 15002, service: db}
  - {port: 15003, service: echo}
  metrics: {port: 19090}
---
kind: Dataplane
mesh: default
name: orders-1
spec:
  address: 127.0.0.2
  inbound: [{port: 18080, servicePort: 8080, tags: {service: orders, version: v1, protocol: http}}]
---
kind: Dataplane
mesh: default
name: db-1
spec:
  address: 127.0.0.3
  inbound: [{port: 18080, servicePort: 5432, tags: {service: db, protocol: tcp}}]
---
kind: Dataplane
mesh: default
name: echo-1
spec:
  address: 127.0.0.4
  inbound: [{port: 18080, servicePort: 9000, tags: {service: echo, protocol: grpc}}]
"""


def rendered(name: str = "web-1", mesh_text: str = MESH) -> RenderResult:
    resources = load_resources(mesh_text)
    mesh = next(r for r in resources if r.kind == "Mesh")
    snap = MeshSnapshot.build(mesh, [r for r in resources if r.mesh == "default"], revision=1)
    return render(snap.dataplanes[name], snap, [*plugins(), step.PLUGIN])


def stats_loggers(result: RenderResult, scope: str = "meshline") -> dict[str, list[dict[str, Any]]]:
    """listener name -> the stats access loggers' configs (as Envoy will decode them) of one
    stats scope (``meshline``: the requests'; ``meshline.paths``: per path, for `top`)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for name, packed in result.snapshot.slots[LISTENER].resources.items():
        lst = listener_pb2.Listener()
        packed.any.Unpack(lst)
        found: list[dict[str, Any]] = []
        for f in lst.filter_chains[0].filters:
            if f.name != "envoy.filters.network.http_connection_manager":
                continue
            h = hcm_pb2.HttpConnectionManager()
            f.typed_config.Unpack(h)
            for log in h.access_log:
                if log.name == step.STATS_LOGGER:
                    typed = typed_struct_pb2.TypedStruct()
                    log.typed_config.Unpack(typed)
                    assert typed.type_url == step.STATS_LOGGER_TYPE
                    config = json_format.MessageToDict(typed.value)
                    if config["stats_scope"]["prefix"] == scope:
                        found.append({**config, "only": condition(log.filter)})
        out[name] = found
    return out


def condition(f: accesslog_pb2.AccessLogFilter) -> str:
    """A logger's filter as a CEL-like string: Envoy's status filter for the upgrade split, or CEL."""
    if f.HasField("status_code_filter"):
        cmp = f.status_code_filter.comparison
        op = {accesslog_pb2.ComparisonFilter.EQ: "==", accesslog_pb2.ComparisonFilter.NE: "!="}[cmp.op]
        return f"response.code {op} {cmp.value.default_value}"
    cel = cel_pb2.ExpressionFilter()
    f.extension_filter.typed_config.Unpack(cel)
    return cel.expression


def tags(cfg: dict[str, Any]) -> dict[str, str]:
    return {t["name"]: t["value_format"] for t in cfg["counters"][0]["stat"]["tags"]}


def test_outbound_http_counts_each_request_with_the_callers_tags_and_the_answering_endpoint() -> None:
    loggers = stats_loggers(rendered())
    cfg, upgrade = loggers["outbound_15001"]
    assert tags(cfg) == {
        "reporter": "source", "mesh": "default", "source_service": "web", "source_version": "v9",
        "source_zone": "z1", "destination_service": "orders", "protocol": "http",
        "destination_version": "%UPSTREAM_METADATA(envoy.lb:version)%",
        "destination_zone": "%UPSTREAM_METADATA(envoy.lb:zone)%",
        "response_code": "%RESPONSE_CODE%", "mesh_denied": "%RESP(x-meshline-denied)%",
        "response_flags": "%RESPONSE_FLAGS%",
    }
    assert cfg["counters"][0]["stat"]["name"] == "requests" and cfg["counters"][0]["value_fixed"] == "1"
    hists = {h["stat"]["name"]: (h["unit"], h["value_format"]) for h in cfg["histograms"]}
    assert hists == {
        "request_duration": ("Microseconds", "%COMMON_DURATION(DS_RX_BEG:DS_TX_END:us)%"),
        "request_bytes": ("Bytes", "%BYTES_RECEIVED%"),
        "response_bytes": ("Bytes", "%BYTES_SENT%"),
    }
    assert all(h["stat"]["tags"] == cfg["counters"][0]["stat"]["tags"] for h in cfg["histograms"])
    assert cfg["stats_scope"]["prefix"] == "meshline" and cfg["stats_scope"]["max_counters"] > 0
    # shared by every version of this listener, so a config change keeps the counters
    assert cfg["stats_scope"]["sharing_name"] == "meshline.outbound_15001"
    # WebSocket upgrades (101) have no last byte sent back: their logger times the 101 answer
    assert (cfg["only"], upgrade["only"]) == ("response.code != 101", "response.code == 101")
    assert {**upgrade, "histograms": [], "only": ""} == {**cfg, "histograms": [], "only": ""}
    durations = {h["stat"]["name"]: h["value_format"] for h in upgrade["histograms"]}
    assert durations["request_duration"] == "%COMMON_DURATION(DS_RX_BEG:DS_TX_BEG:us)%"


def test_inbound_names_the_caller_by_certificate_and_grpc_adds_its_status() -> None:
    inbound, _ = stats_loggers(rendered())["inbound_18080"]
    assert tags(inbound) == {
        "reporter": "destination", "mesh": "default", "destination_service": "web", "destination_version": "v9",
        "destination_zone": "z1", "protocol": "http", "source_service": "%DOWNSTREAM_PEER_URI_SAN%",
        "response_code": "%RESPONSE_CODE%", "mesh_denied": "%RESP(x-meshline-denied)%",
        "response_flags": "%RESPONSE_FLAGS%",
        # not a Prometheus label: tells the control plane's golden signals a meshed plaintext
        # caller from one outside the mesh (telemetry.signals)
        "source_claimed": "%REQ(X-MESHLINE-SOURCE):128%",
    }
    grpc, _ = stats_loggers(rendered())["outbound_15003"]
    assert tags(grpc)["grpc_status"] == "%GRPC_STATUS_NUMBER%" and tags(grpc)["protocol"] == "grpc"


def test_paths_are_counted_in_their_own_scope_on_the_side_that_counts_the_request() -> None:
    [outbound] = stats_loggers(rendered(), "meshline.paths")["outbound_15001"]
    assert tags(outbound) == {
        "reporter": "source", "source_service": "web", "destination_service": "orders",
        "method": "%REQ(:METHOD):16%", "path": "%PATH(NQ:ORIG_OR_PATH):256%", "response_code": "%RESPONSE_CODE%",
        "mesh_denied": "%RESP(x-meshline-denied)%",
    }
    assert outbound["only"] == "response.code != 101"
    assert outbound["stats_scope"]["max_counters"] == step.MAX_PATHS_PER_LISTENER
    [inbound] = stats_loggers(rendered(), "meshline.paths")["inbound_18080"]
    assert tags(inbound)["reporter"] == "destination" and tags(inbound)["destination_service"] == "web"
    assert "!connection.mtls" in inbound["only"] and "x-meshline-source" in inbound["only"]
    assert stats_loggers(rendered(), "meshline.paths")["outbound_15002"] == []  # TCP
    # in a strict mesh every caller has a certificate: nothing is from outside, no inbound paths logger
    strict = rendered(mesh_text=MESH.replace("mtls: {mode: disabled}", "mtls: {mode: strict}"))
    assert stats_loggers(strict, "meshline.paths")["inbound_18080"] == []
    assert len(stats_loggers(strict, "meshline.paths")["outbound_15001"]) == 1


def test_tcp_listeners_get_no_stats_logger() -> None:
    assert stats_loggers(rendered())["outbound_15002"] == []
    assert stats_loggers(rendered("db-1"))["inbound_18080"] == []


def test_envoy_accepts_the_rendered_config_and_the_bucket_settings(tmp_path: Path) -> None:
    result = rendered()
    envoy_accepts(result, tmp_path)
    # and with the agent's bootstrap stats settings
    boot = static_bootstrap(result)
    boot.stats_config.CopyFrom(stats_config())
    path = tmp_path / "with-stats.json"
    path.write_text(json_format.MessageToJson(boot))
    validate(path)


def dataplane(**metrics: object) -> dict[str, Any]:
    return {
        "kind": "Dataplane", "mesh": "default", "name": "web-1",
        "spec": {"address": "127.0.0.1", "adminPort": 9901,
                 "inbound": [{"port": 18080, "servicePort": 8080, "tags": {"service": "web"}}],
                 "metrics": metrics},
    }


def test_dataplane_metrics_field_is_validated_with_field_paths() -> None:
    kinds = default_kinds()
    ok = kinds.decode(dataplane(port=19090))
    assert ok.spec.metrics.port == 19090 and ok.spec.metrics.path == "/metrics"  # type: ignore[attr-defined]
    for bad, where in (
        ({"port": 70000}, "spec.metrics.port"),
        ({"port": 19090, "path": "metrics"}, "spec.metrics.path"),
        ({"port": 19090, "path": "/m?x=1"}, "spec.metrics.path"),
        ({"port": 18080}, "spec.metrics.port"),  # taken by the inbound listener
        ({"port": 9901}, "spec.metrics.port"),  # taken by Envoy's admin
        ({"port": 19090, "scheme": "https"}, "spec.metrics.scheme"),
    ):
        with pytest.raises(ValidationError) as err:
            kinds.decode(dataplane(**bad))
        assert any(p.path == where for p in err.value.problems), (bad, err.value.problems)
