"""perTryTimeout against the request timeout it runs under, across Retry and Timeout resources."""

from __future__ import annotations

from typing import Any

from meshline.core.resource import Resource
from meshline.kinds import default_kinds
from meshline.policies.retry.consistency import RETRY_TIMEOUTS, timeout_conflicts
from meshline.render.policy_kind import MeshView

KINDS = default_kinds()


def res(kind: str, name: str, spec: dict[str, Any]) -> Resource:
    return KINDS.decode({"kind": kind, "mesh": "default", "name": name, "spec": spec})


def dataplane(name: str, service: str, protocol: str, outbound: list[str]) -> Resource:
    return res("Dataplane", name, {
        "address": "10.0.0.1",
        "inbound": [{"port": 18080, "servicePort": 8080, "tags": {"service": service, "protocol": protocol}}],
        "outbound": [{"port": 15001 + i, "service": s} for i, s in enumerate(outbound)],
    })


MESH = [
    dataplane("web-1", "web", "http", ["orders", "echo"]),
    dataplane("orders-1", "orders", "http", []),
    dataplane("echo-1", "echo", "grpc", []),
]


def retry(per_try: str, **spec: Any) -> Resource:
    return res("Retry", "r", {"conf": {"http": {"perTryTimeout": per_try}}, **spec})


def timeout(request: str, name: str = "t", **spec: Any) -> Resource:
    return res("Timeout", name, {"conf": {"http": {"requestTimeout": request}}, **spec})


def test_a_per_try_timeout_longer_than_the_default_request_timeout_is_refused() -> None:
    r = retry("20s", destinations=[{"match": {"service": "orders"}}])
    [problem] = timeout_conflicts(r, [*MESH, r])
    assert problem.path == "spec.conf.http.perTryTimeout"
    assert problem.message.startswith("20s is longer than the request timeout 15s (the default) on web-1 -> orders")
    assert "lower perTryTimeout below 15s or raise http.requestTimeout with a Timeout policy" in problem.message


def test_a_timeout_policy_that_makes_room_lets_it_through() -> None:
    r = retry("20s")
    assert timeout_conflicts(r, [*MESH, r, timeout("30s")]) == []


def test_grpc_has_no_request_timeout_by_default_so_anything_fits() -> None:
    r = retry("1h", destinations=[{"match": {"service": "echo"}}])
    assert timeout_conflicts(r, [*MESH, r]) == []


def test_a_timeout_that_would_cut_under_an_existing_retry_is_refused() -> None:
    r, t = retry("2s"), timeout("1s", destinations=[{"match": {"service": "orders"}}])
    [problem] = timeout_conflicts(t, [*MESH, r, t])
    assert problem.path == "spec.conf.http.requestTimeout"
    assert problem.message.startswith("1s is shorter than perTryTimeout 2s of Retry r on web-1 -> orders")


def test_only_the_policies_that_win_are_compared() -> None:
    """The mesh-wide 1s Timeout loses to a more specific 10s one for web -> orders: no conflict."""
    r = retry("2s", destinations=[{"match": {"service": "orders"}}])
    broad = timeout("1s", name="broad")
    specific = timeout("10s", name="specific", destinations=[{"match": {"service": "orders"}}])
    assert timeout_conflicts(r, [*MESH, r, broad, specific]) == []


def test_the_check_sees_stored_and_pending_resources() -> None:
    r = retry("20s")
    [problem] = RETRY_TIMEOUTS.check(r, MeshView.build("default", MESH, [r]))
    assert str(problem).startswith("spec.conf.http.perTryTimeout: 20s is longer")
    # applied together with a Timeout that makes room: fine
    assert RETRY_TIMEOUTS.check(r, MeshView.build("default", MESH, [r, timeout("30s")])) == []


def test_it_runs_on_retries_and_on_what_sets_the_request_timeout_only() -> None:
    assert RETRY_TIMEOUTS.runs_on("Retry", retry("20s"))
    assert RETRY_TIMEOUTS.runs_on("Retry", timeout("30s"))
    assert not RETRY_TIMEOUTS.runs_on("Retry", MESH[0])
    assert RETRY_TIMEOUTS.check(MESH[0], MeshView.build("default", MESH, [retry("20s")])) == []
