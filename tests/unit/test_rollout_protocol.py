"""A rollout's service must be HTTP by the one protocol rule: instances that disagree make a
service tcp (core.dataplane.service_protocol), so its rollout route would never apply."""

from __future__ import annotations

from meshline.core.resource import Resource
from meshline.kinds import default_kinds
from meshline.rollouts.checks import rollout_problems

KINDS = default_kinds()


def dp(name: str, protocol: str, version: str) -> Resource:
    return KINDS.decode({"kind": "Dataplane", "mesh": "default", "name": name, "spec": {"address": "10.0.0.1",
        "inbound": [{"port": 18080, "servicePort": 8080,
                     "tags": {"service": "orders", "protocol": protocol, "version": version}}]}})  # fmt: skip


ROLLOUT = KINDS.decode({"kind": "Rollout", "mesh": "default", "name": "r", "spec": {
    "service": "orders", "stable": {"version": "v1"}, "candidate": {"version": "v2"},
    "strategy": {"canary": {"steps": [{"weight": 10}]}}}})  # fmt: skip


def test_instances_that_agree_on_http_are_accepted() -> None:
    assert [p for p in rollout_problems(ROLLOUT, [dp("a", "http", "v1"), dp("b", "http", "v2")])
            if p.path == "spec.service"] == []  # fmt: skip


def test_instances_that_disagree_make_the_service_tcp_and_the_rollout_is_refused() -> None:
    [problem] = [p for p in rollout_problems(ROLLOUT, [dp("a", "http", "v1"), dp("b", "grpc", "v2")])
                 if p.path == "spec.service"]  # fmt: skip
    assert problem.message.startswith("'orders' is served as tcp (its instances say grpc, http);")
