"""The shipped Grafana dashboards are valid dashboard JSON and query only metrics Meshline exports.

The names come from the code that produces them: the agent's translation (fed Envoy-shaped
stats) and a control plane's /metrics rendering. Envoy's own (envoy_*) names are checked
against a real scrape by tests/e2e/test_metrics_prometheus.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import meshline.telemetry
from meshline.agent import metrics as agent_metrics
from meshline.controlplane.metrics import ControlPlaneMetrics
from meshline.controlplane.read_model import ReadModel
from meshline.controlplane.results import RenderResults
from meshline.kinds import default_kinds
from meshline.xds.status import StatusRegistry

GRAFANA = Path(meshline.telemetry.__file__).parent / "grafana"
DASHBOARDS = sorted(GRAFANA.glob("*.json"))

# PromQL words that look like metric names but are not.
PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "rate", "irate", "increase", "histogram_quantile", "by", "without",
    "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "time", "offset", "bool", "topk",
    "bottomk", "abs", "clamp_min", "clamp_max", "label_values", "vector", "scalar", "delta", "deriv",
}
PROMETHEUS_BUILTIN = {"up"}  # made by Prometheus for every target
# Provided by meshline.security through ControlPlaneContext.services["metrics_extra"].
SECURITY = {"meshline_certificate_expiry_timestamp_seconds"}


def metric_names(expr: str) -> set[str]:
    label_values = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", expr, re.S)
    if label_values:  # a dashboard variable: label_values(<series selector>, <label>)
        expr = label_values.group(1)
    by_name = {n for alt in re.findall(r'__name__=~?"([^"]*)"', expr) for n in alt.split("|")}
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values
    expr = re.sub(r"\{[^}]*\}", "", expr)  # matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\$\w+", "", expr)  # dashboard variables
    names = set()
    for match in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
        word = match.group(0)
        after = expr[match.end():].lstrip()
        if word in PROMQL_WORDS or after.startswith("("):
            continue
        names.add(word)
    return names | by_name


def _with_suffixes(fams: dict[str, Any]) -> set[str]:
    out = set()
    for name, fam in fams.items():
        out.add(name)
        if fam.type == "histogram":
            out |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return out


def exported_by_agent() -> set[str]:
    """What the agent serves, from its translation of every kind of stat it knows."""
    labels = 'reporter="source",mesh="default",source_service="web",destination_service="orders"'
    envoy = "".join(
        f"# TYPE {name} {kind}\n"
        + (f'{name}{{{labels}}} 1\n' if kind == "counter" else f'{name}_bucket{{{labels},le="+Inf"}} 1\n')
        for name, (_, kind, _) in agent_metrics.HTTP_SERIES.items()
    )
    envoy += "".join(f'# TYPE {n} counter\n{n}{{envoy_tcp_prefix="outbound_15001"}} 1\n' for n in agent_metrics.TCP_SERIES)
    envoy += f'# TYPE {agent_metrics.LISTENER_CLOSED} counter\n' \
             f'{agent_metrics.LISTENER_CLOSED}{{envoy_listener_address="127.0.0.1_15001"}} 1\n'
    workload = agent_metrics.Workload("default", "web", {}, 18080, {15001: "orders"})
    fams = agent_metrics.parse(agent_metrics.render(agent_metrics.translate(agent_metrics.parse(envoy), workload)))
    names = {n for n in _with_suffixes(fams) if n.startswith("meshline_")}
    return names | {"meshline_dataplane_envoy_up", "meshline_dataplane_app_metrics_up"}


def exported_by_control_plane() -> set[str]:
    model = ReadModel()
    for doc in ({"kind": "Mesh", "name": "default"}, {"kind": "Dataplane", "mesh": "default", "name": "web-1", "spec": {
            "address": "10.0.0.1", "inbound": [{"port": 18080, "servicePort": 8080, "tags": {"service": "web"}}]}}):
        res = default_kinds().decode(doc)
        model.replace(res.key, res)
    reconciler = SimpleNamespace(listeners=[], model=model, results=RenderResults())
    m = ControlPlaneMetrics()
    m.watch(reconciler, StatusRegistry())  # type: ignore[arg-type]
    m.push_latency["default"].observe(0.1)
    m.api_request("GET", "/api/v1/health", 200, 0.01)
    ctx = SimpleNamespace(reconciler=reconciler, model=model, results=reconciler.results, status=StatusRegistry(),
                          metrics=m, services={})
    return _with_suffixes(agent_metrics.parse(m.render(ctx)))  # type: ignore[arg-type]


def exprs(board: dict[str, Any]) -> list[str]:
    out = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    out += [v["definition"] for v in board["templating"]["list"] if v["type"] == "query"]
    return out


def test_four_dashboards_ship() -> None:
    assert {p.stem for p in DASHBOARDS} == {"mesh", "service", "dataplane", "control-plane"}


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_is_grafana_dashboard_json(path: Path) -> None:
    board = json.loads(path.read_text())
    assert board["uid"] == f"meshline-{path.stem}" and board["title"].startswith("Meshline / ")
    assert isinstance(board["schemaVersion"], int) and board["panels"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"] for v in board["templating"]["list"]}
    assert "datasource" in variables
    for panel in board["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24 and pos["h"] > 0
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"] and all(t["expr"] and t["refId"] for t in panel["targets"])
        for t in panel["targets"]:
            used = set(re.findall(r"\$(\w+)", t["expr"])) - {"__rate_interval"}
            assert used <= variables, f"{panel['title']}: unknown variables {used - variables}"
            assert t["expr"].count("(") == t["expr"].count(")") and t["expr"].count("{") == t["expr"].count("}")


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_queries_only_exported_metrics(path: Path) -> None:
    exported = exported_by_agent() | exported_by_control_plane() | SECURITY | PROMETHEUS_BUILTIN
    board = json.loads(path.read_text())
    for expr in exprs(board):
        names = metric_names(expr)
        assert names, f"no metric in {expr}"
        unknown = {n for n in names if not n.startswith("envoy_")} - exported
        assert not unknown, f"{path.name}: {expr} uses {unknown}, which Meshline does not export"


def test_metric_name_extraction() -> None:
    expr = ('histogram_quantile(0.99, sum by (le, destination_service) (rate(meshline_request_duration_seconds_bucket'
            '{reporter="source",mesh=~"$mesh"}[$__rate_interval]))) / on (x) group_left sum(up{a="rate(b)"})'
            ' - time()')
    assert metric_names(expr) == {"meshline_request_duration_seconds_bucket", "up"}
    assert metric_names('label_values(meshline_requests_total{mesh=~"$mesh"}, destination_service)') == {
        "meshline_requests_total"}
