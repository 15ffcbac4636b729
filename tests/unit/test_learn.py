"""The pure parts of learning from traffic: the bounded per-edge path index, the suggestion
(collapsed prefixes, skipped edges, comments, documents apply accepts), the capture filter's
rendering, HAR entries and replay's differences."""

from __future__ import annotations

import base64
import json

import yaml

from meshline.learn.capture import lua_source
from meshline.learn.har import archive, entry
from meshline.learn.recording import TrafficRecordingSpec
from meshline.learn.replay import Recorded, Replayed, body_difference, compare, endpoint_path, from_har
from meshline.learn.suggest import Edge, SeenPath, collapse, suggest, to_yaml
from meshline.telemetry.edge_paths import EdgePathLimits, EdgePaths
from meshline.telemetry.record import LogRecord
from meshline.testing.policy_kit import problems


def rec(path: str, method: str = "GET", at: float = 1000.0, source: str = "web") -> LogRecord:
    return LogRecord(time=at, mesh="m", dataplane="web-1", direction="outbound", source=source,
                     destination="orders", method=method, path=path)


def test_edge_paths_stay_within_their_bound_by_collapsing_into_prefixes() -> None:
    idx = EdgePaths(EdgePathLimits(per_edge=4, edges=10, ttl_s=100))
    for i in range(50):
        idx.add(rec(f"/items/{i}?q=1"))
    idx.add(rec("/health"))
    seen = idx.of(("web", "orders"), now=1000, since_s=100)
    assert len(seen) <= 4
    items = [k for k in seen if k.path == "/items/"]
    assert items and items[0].prefix and seen[items[0]].count == 50  # nothing forgotten, only widened
    idx.add(rec("/items/999"))  # a new path under a collapsed prefix counts in it
    assert idx.of(("web", "orders"), 1000, 100)[items[0]].count == 51


def test_edge_paths_forget_what_was_not_seen_for_their_ttl_and_bound_edges() -> None:
    idx = EdgePaths(EdgePathLimits(per_edge=8, edges=2, ttl_s=60))
    idx.add(rec("/old", at=1000))
    idx.add(rec("/new", at=1100))
    assert [k.path for k in idx.of(("web", "orders"), 1100, 3600)] == ["/new"]
    for caller in ("a", "b", "c"):
        idx.add(rec("/x", source=caller, at=1100))
    assert len(idx.edges) == 2 and ("web", "orders") not in idx.edges


def sp(path: str, method: str = "GET", n: int = 1, prefix: bool = False) -> SeenPath:
    return SeenPath(method, path, prefix, n, 1000.0)


def test_collapse_merges_siblings_into_their_parent_but_never_into_the_root() -> None:
    rules = collapse([sp("/items/1"), sp("/items/2", "POST"), sp("/items/3"), sp("/health"), sp("/a"), sp("/b")])
    assert [(r.path, r.prefix, sorted(r.methods), r.requests) for r in rules] == [
        ("/a", False, ["GET"], 1), ("/b", False, ["GET"], 1), ("/health", False, ["GET"], 1),
        ("/items/", True, ["GET", "POST"], 3),
    ]
    assert [r.path for r in collapse([sp("/items/1"), sp("/items/2")])] == ["/items/1", "/items/2"]  # below the threshold


def test_suggestion_allows_each_edge_denies_the_rest_and_apply_accepts_it() -> None:
    edges = [Edge("web", "orders", 10, 0, 1000.0), Edge("legacy", "orders", 3, 3, 1000.0),
             Edge("external", "orders", 5, 0, 1000.0), Edge("orders", "db", 4, 0, 1000.0, "tcp")]
    paths = {("web", "orders"): [sp("/items/1", n=4), sp("/items/2", n=3), sp("/items/3", n=2), sp("/", n=1)],
             ("orders", "db"): [sp("/ignored")]}
    s = suggest("default", edges, paths, mode="dry-run")
    assert [d["name"] for d in s.docs] == ["learned-orders-to-db", "learned-web-to-orders", "learned-deny-unobserved"]
    web = s.docs[1]["spec"]
    assert web["mode"] == "dry-run" and web["rules"] == [{"paths": [{"exact": "/"}], "methods": ["GET"]},
                                                          {"paths": [{"prefix": "/items/"}], "methods": ["GET"]}]
    assert "rules" not in s.docs[0]["spec"]  # a TCP edge: no HTTP rules
    assert len(s.skipped) == 2  # the caller without identity, the edge that was only refused
    text = to_yaml(s, ["header"])
    assert problems(text) == []
    assert "# web -> orders: 10 request(s), last seen 1970-01-01T00:16:40Z" in text
    assert "\n  # 9 request(s), last seen" in text  # the /items/ rule's own comment
    assert yaml.safe_load_all(text)
    with_denied = suggest("default", edges, include_denied=True)
    assert "learned-legacy-to-orders" in [d["name"] for d in with_denied.docs]


def test_the_capture_filter_redacts_the_always_redacted_headers_and_the_asked_ones() -> None:
    spec = TrafficRecordingSpec.model_validate({"destinations": [{"match": {"service": "orders"}}], "until": 5,
                                                "redactHeaders": ["X-Api-Key"], "samplePercent": 10,
                                                "maxBodyBytes": 100})
    lua = lua_source(spec)
    for h in ("authorization", "cookie", "set-cookie", "proxy-authorization", "x-api-key"):
        assert f'["{h}"] = true' in lua
    assert "local MAX = 100" in lua and "local SAMPLE = 0.1" in lua
    bad = {"kind": "TrafficRecording", "mesh": "default", "name": "r",
           "spec": {"destinations": [{"match": {"service": "*"}}], "until": 5, "maxBodyBytes": 10**9}}
    found = problems(bad)
    assert any("maxBodyBytes" in p for p in found)


def captured(path: str, status: int, body: bytes, cut: bool = False) -> dict[str, object]:
    size = len(body) + (10 if cut else 0)
    return {"time": 1000.0, "method": "GET", "path": path, "status": status, "durationMs": 2.5, "source": "web",
            "destination": "orders", "destinationVersion": "v1", "dataplane": "orders-1", "requestId": "r",
            "capture": {"reqHeaders": {":path": path, ":authority": "orders", "authorization": "[redacted]",
                                       "x-request-id": "r"},
                        "respHeaders": {"content-type": "application/json"}, "reqBody": "",
                        "respBody": base64.b64encode(body).decode(), "reqBodyBytes": 0, "respBodyBytes": size}}


def test_har_round_trip_and_cut_bodies() -> None:
    har = archive([entry(captured("/items/1?x=1", 200, b'{"a":1}')), entry(captured("/big", 200, b"abc", cut=True))])
    json.dumps(har)
    got = from_har(har)
    assert [(r.path, r.endpoint, r.response_cut) for r in got] == [("/items/1?x=1", "GET /items/{id}", False),
                                                                   ("/big", "GET /big", True)]
    assert "body cut at 3 of 13 bytes" in har["log"]["entries"][1]["response"]["comment"]


def recorded(body: bytes, status: int = 200, cut: bool = False) -> Recorded:
    return Recorded("GET", "/x", {}, b"", status, {"content-type": "application/json"}, body, cut, 1.0, 0.0)


def test_json_bodies_compare_by_structure_without_the_ignored_fields() -> None:
    ignored = frozenset({"timestamp", "requestId"})
    r = recorded(b'{"a": 1, "timestamp": 5, "n": {"requestId": "x", "b": [1, 2]}}')
    assert body_difference(r, b'{"n": {"b": [1, 2], "requestId": "y"}, "timestamp": 9, "a": 1}', ignored) == ""
    assert body_difference(r, b'{"a": 2, "n": {"b": [1, 2]}}', ignored) == "$.a: 1 -> 2"
    assert body_difference(r, b'{"a": 1, "n": {"b": [1]}}', ignored) == "$.n.b: 2 items -> 1"
    assert body_difference(recorded(b"text"), b"text", ignored) == ""
    assert body_difference(recorded(b"abc", cut=True), b"abcdef", ignored) == ""
    assert body_difference(recorded(b'{"a":1}'), b'{"a": 1}', ignored, mode="exact").endswith("not equal")


def test_compare_reports_per_endpoint() -> None:
    rs = [recorded(b"{}"), recorded(b"{}", status=201)]
    got = [Replayed(200, {"content-type": "application/json"}, b"{}", 1.0),
           Replayed(500, {"content-type": "text/plain"}, b"{}", 3.0)]
    [rep] = compare(rs, got)
    assert rep.status == {"201 -> 500": 1} and rep.headers == {"content-type": 1} and rep.differs
    assert rep.to_json()["latencyMs"]["replayed"]["p99"] == 3.0
    assert endpoint_path("/u/3f2b8c1e-1111-2222-3333-444455556666/orders/7") == "/u/{id}/orders/{id}"
    assert endpoint_path("/facade/v1") == "/facade/v1"


def test_intake_counts_edges_paths_denials_and_publishes_captures_to_recordings_only() -> None:
    import asyncio

    from meshline.telemetry.intake import TapFilter, TelemetryIntake

    async def run() -> None:
        intake = TelemetryIntake(clock=lambda: 1010.0)
        tap = intake.subscribe("m", TapFilter(service="orders"))
        recording = intake.subscribe("m", TapFilter(service="orders", captures=True, version="v1"))
        out = LogRecord(time=1000.0, mesh="m", dataplane="web-1", direction="outbound", source="web",
                        destination="orders", destination_version="v1", method="GET", path="/items/1", status=200)
        shadow = LogRecord(time=1000.0, mesh="m", dataplane="orders-1", direction="inbound", source="web",
                           destination="orders", destination_version="v1", method="GET", path="/items/1",
                           status=200, shadow_denied_by="learned-deny-unobserved",
                           capture={"reqHeaders": {}, "size": 10})
        refused = LogRecord(time=1001.0, mesh="m", dataplane="orders-1", direction="inbound", source="legacy",
                            destination="orders", method="POST", path="/x?y=1", status=403, denied=True,
                            details="rbac_access_denied_matched_policy[mesh_default]")
        intake.ingest([out, shadow, refused])
        [edge] = [e for e in intake.observed_edges("m", 60) if e["source"] == "web"]
        assert (edge["requests"], edge["denied"], edge["lastSeen"]) == (1, 0, 1000.0)
        assert [p["path"] for p in intake.observed_paths("m", ("web", "orders"), 60)] == ["/items/1"]
        rows = {(d["mode"], d["policy"], d["source"], d["path"], d["requests"]) for d in intake.denied("m", 60)}
        assert rows == {("dry-run", "learned-deny-unobserved", "web", "/items/1", 1),
                        ("enforced", "mesh_default", "legacy", "/x", 1)}
        assert recording.queue.get_nowait() is shadow and recording.queue.empty()
        assert tap.queue.get_nowait() is out  # the tap sees the request once, not its captured half
        assert intake.sizes("m")["denials"] == 2

    asyncio.run(run())


def test_denials_stay_within_their_bound_and_forget_idle_rows() -> None:
    from meshline.telemetry.denials import DenialKey, DenialLimits, Denials

    d = Denials(DenialLimits(keys=3, ttl_s=60))
    for i in range(5):
        d.add(DenialKey("p", "enforced", "web", "orders", "GET", f"/{i}"), at=1000.0 + i)
    assert len(d.rows) == 3 and d.evicted == 2
    assert [k.path for k, _ in d.since(now=1004, seconds=3600)] == ["/2", "/3", "/4"]
    assert [k.path for k, _ in d.since(now=1063.5, seconds=3600)] == ["/4"]  # the others idle for over 60 s


def test_a_har_from_another_tool_with_plain_text_bodies_replays() -> None:
    har = {"log": {"version": "1.2", "entries": [{
        "startedDateTime": "2026-12-03T10:00:00.000+01:00", "time": 12.5,
        "request": {"method": "POST", "url": "http://shop.test/orders?x=1", "headers": [{"name": "Accept", "value": "*/*"}],
                    "postData": {"mimeType": "application/json", "text": '{"qty": 2}'}},
        "response": {"status": 201, "headers": [{"name": "Content-Type", "value": "application/json"}],
                     "content": {"size": 8, "mimeType": "application/json", "text": '{"ok":1}'}}}]}}
    [r] = from_har(har)
    assert (r.path, r.body, r.response_body, r.response_cut, r.endpoint) == (
        "/orders?x=1", b'{"qty": 2}', b'{"ok":1}', False, "POST /orders")
    assert r.response_headers["content-type"] == "application/json"
    assert entry(captured("/a?b=1&c=", 200, b""))["request"]["queryString"] == [
        {"name": "b", "value": "1"}, {"name": "c", "value": ""}]


def test_nothing_observed_suggests_nothing_rather_than_a_deny_of_everything() -> None:
    assert suggest("default", []).docs == []
    only_external = suggest("default", [Edge("external", "orders", 3, 0, 1000.0)])
    assert only_external.docs == [] and len(only_external.skipped) == 1
