"""LoadBalancer validation: bad input is refused with its field path and a fix."""

from __future__ import annotations

from typing import Any

import pytest

from meshline.kinds import default_kinds
from meshline.testing.policy_kit import problems

KINDS = default_kinds()


def lb(**conf: Any) -> dict[str, Any]:
    return {"kind": "LoadBalancer", "mesh": "default", "name": "lb",
            "spec": {"destinations": [{"match": {"service": "orders"}}], "conf": conf}}


def test_source_ip_keeps_its_spelling() -> None:
    res = KINDS.decode(lb(type="Maglev", hashPolicies=[{"sourceIP": True}]))
    assert res.spec.to_json()["conf"]["hashPolicies"] == [{"sourceIP": True, "terminal": False}]


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (lb(type="Fastest"), "spec.conf.type: input should be 'RoundRobin', 'LeastRequest', 'Random', 'RingHash'"),
        (lb(type="RingHash"), "spec.conf.hashPolicies: is required with type: RingHash"),
        (lb(hashPolicies=[{"header": "x-user"}]),
         "spec.conf.hashPolicies: only apply with type: RingHash or Maglev (type is RoundRobin)"),
        (lb(type="Random", leastRequest={"choiceCount": 3}),
         "spec.conf.leastRequest: only applies with type: LeastRequest (type is Random); set type: LeastRequest"
         " or remove leastRequest"),
        (lb(type="LeastRequest", leastRequest={"choiceCount": 1}),
         "spec.conf.leastRequest.choiceCount: input should be greater than or equal to 2"),
        (lb(type="RingHash", hashPolicies=[{"header": "x"}], ringHash={"minRingSize": 4096, "maxRingSize": 1024}),
         "spec.conf.ringHash.minRingSize: 4096 is larger than maxRingSize 1024; lower it"),
        (lb(type="RingHash", hashPolicies=[{"header": "x"}], ringHash={"maxRingSize": 0}),
         "spec.conf.ringHash.maxRingSize: must be 1 or more"),
        (lb(type="Maglev", hashPolicies=[{"header": "x"}], maglev={"tableSize": 65536}),
         "spec.conf.maglev.tableSize: must be a prime number"),
        (lb(type="RingHash", hashPolicies=[{"header": "x", "cookie": {"name": "s"}}]),
         "spec.conf.hashPolicies[0]: set exactly one of header, cookie, sourceIP: true, queryParameter"),
        (lb(type="RingHash", hashPolicies=[{}]), "spec.conf.hashPolicies[0]: set exactly one of"),
        (lb(type="RingHash", hashPolicies=[{"cookie": {"name": "s", "ttl": "forever"}}]),
         "spec.conf.hashPolicies[0].cookie.ttl: 'forever' is not a duration"),
        (lb(localityAwareness={"failoverOrder": ["b", "b"]}),
         "spec.conf.localityAwareness.failoverOrder: lists b more than once"),
        (lb(localityAwareness={"overprovisioningFactor": 50}),
         "spec.conf.localityAwareness.overprovisioningFactor: input should be greater than or equal to 100"),
        (lb(panicThreshold=120), "spec.conf.panicThreshold: must be a percentage from 0 to 100"),
    ],
)
def test_bad_balancers_name_the_field_and_the_fix(doc: dict[str, Any], expected: str) -> None:
    found = problems(doc)
    assert any(p.startswith(expected) for p in found), found
