"""The HTTPRoute a rollout owns: the one place its weights reach the data plane.

A rollout does not render Envoy config itself; it writes an ordinary HTTPRoute (named
``rollout-<name>``, labelled :data:`OWNER`), so ``meshline get httproutes`` and ``inspect``
show why a sidecar routes as it does, and the HTTPRoute plugin renders it like any other.
The route is a pure function of the rollout's spec and state (:func:`route_for`): one
resource, written in one store write, so routing is never half-written, and a restarted
control plane writes back exactly the route it left.
"""

from __future__ import annotations

import re
from typing import Any

from meshline.core.resource import Resource
from meshline.policies.httproute.api import HTTPRouteSpec
from meshline.rollouts.api import RolloutSpec
from meshline.rollouts.machine import Weights

OWNER = "meshline.io/rollout"  # label: the Rollout that owns a generated HTTPRoute


def route_name(rollout: str) -> str:
    return f"rollout-{rollout}"[:63].rstrip("-")


def _header(name: str, value: str) -> dict[str, Any]:
    return {"headers": [{"name": name, "exact": value}]}


def _cookie(name: str, value: str) -> dict[str, Any]:
    pattern = rf"(.*;\s*)?{re.escape(name)}={re.escape(value)}(;.*)?"
    return {"headers": [{"name": "cookie", "regex": pattern}]}


def route_spec(spec: RolloutSpec, w: Weights) -> dict[str, Any]:
    stable: dict[str, Any] = {"tags": spec.stable.all_tags()}
    candidate: dict[str, Any] = {"tags": spec.candidate.all_tags()}
    rules: list[dict[str, Any]] = []
    if w.testers and spec.testers is not None:
        rules.append({"matches": [_header(spec.testers.name, spec.testers.value)], "backends": [candidate]})
    ab = spec.strategy.ab_test
    if w.ab and ab is not None:
        match = _header(ab.header.name, ab.header.value) if ab.header else _cookie(ab.cookie.name, ab.cookie.value)  # type: ignore[union-attr]
        rules.append({"matches": [match], "backends": [candidate]})
    if w.candidate >= 100:
        backends = [candidate]
    elif w.candidate <= 0:
        backends = [stable]
    else:
        backends = [{**stable, "weight": 100 - w.candidate}, {**candidate, "weight": w.candidate}]
    last: dict[str, Any] = {"backends": backends}
    if w.mirror > 0 and w.candidate < 100:
        last["mirrors"] = [{**candidate, "percent": w.mirror}]
    rules.append(last)
    return {"destinations": [{"match": {"service": spec.service}}], "rules": rules}


def route_for(rollout: Resource, w: Weights, stamp: dict[str, str]) -> Resource:
    assert isinstance(rollout.spec, RolloutSpec)
    spec = HTTPRouteSpec.model_validate(route_spec(rollout.spec, w))
    return Resource(kind="HTTPRoute", mesh=rollout.mesh, name=route_name(rollout.name), spec=spec,
                    labels={**stamp, OWNER: rollout.name})  # fmt: skip


def owner_of(res: Resource) -> str | None:
    return res.labels.get(OWNER)
