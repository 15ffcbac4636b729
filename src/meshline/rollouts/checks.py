"""Checks of a Rollout (and of routes) against the rest of the mesh, run at apply.

* the service and the stable version must have instances (the candidate too, unless the
  rollout waits for it), and speak HTTP (weights and matches are L7);
* one rollout per service;
* no user HTTPRoute/TCPRoute for the service while a rollout owns its routing (either way
  round): the two would fight over the same traffic, and precedence would pick one silently.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from meshline.core.dataplane import DEFAULT_PROTOCOL, DataplaneSpec, service_protocol
from meshline.core.errors import FieldProblem, ValidationError
from meshline.core.resource import Resource
from meshline.core.schema import did_you_mean
from meshline.core.selectors import SelectorSpec
from meshline.rollouts.api import RolloutSpec, Version
from meshline.rollouts.routing import owner_of

if TYPE_CHECKING:
    from meshline.controlplane.context import ControlPlaneContext

L7 = ("http", "http2", "grpc")


def _instances(resources: Iterable[Resource], service: str) -> list[dict[str, str]]:
    return [i.tags for r in resources if r.kind == "Dataplane" and isinstance(r.spec, DataplaneSpec)
            for i in r.spec.inbound if i.service == service]  # fmt: skip


def _matches(tags: dict[str, str], version: Version) -> bool:
    return all(tags.get(k) == v for k, v in version.all_tags().items())


def _routed_services(res: Resource) -> set[str]:
    if res.kind not in ("HTTPRoute", "TCPRoute") or not isinstance(res.spec, SelectorSpec):
        return set()
    return {d.match["service"] for d in res.spec.destinations if d.match.get("service", "*") != "*"}


def _merged(ctx: ControlPlaneContext, mesh: str, pending: Sequence[Resource]) -> list[Resource]:
    live = dict(ctx.model.resources(mesh))
    for p in pending:
        if p.mesh == mesh:
            live[p.key] = p
    return list(live.values())


def rollout_problems(res: Resource, others: Sequence[Resource]) -> list[FieldProblem]:
    spec = res.spec
    assert isinstance(spec, RolloutSpec)
    tags = _instances(others, spec.service)
    if not tags:
        known = sorted({i.service for r in others if r.kind == "Dataplane" and isinstance(r.spec, DataplaneSpec)
                        for i in r.spec.inbound})  # fmt: skip
        guess = did_you_mean(spec.service, known)
        hint = f"did you mean '{guess}'?" if guess else "start its stable version first"
        return [FieldProblem("spec.service", f"service '{spec.service}' has no instances in mesh {res.mesh}; {hint}")]
    out: list[FieldProblem] = []
    # The one protocol rule (instances that disagree make the service tcp, as rendering does).
    protocol = service_protocol(t.get("protocol", DEFAULT_PROTOCOL) for t in tags)
    if protocol not in L7:
        declared = sorted({t.get("protocol", DEFAULT_PROTOCOL) for t in tags})
        served = protocol if declared == [protocol] else f"{protocol} (its instances say {', '.join(declared)})"
        out.append(FieldProblem("spec.service", f"'{spec.service}' is served as {served};"
                                " a rollout moves HTTP requests, so tag its instances protocol=http (or http2, grpc)"))
    versions = sorted({t.get("version", "") for t in tags} - {""})
    if not any(_matches(t, spec.stable) for t in tags):
        out.append(FieldProblem("spec.stable.version", f"no instance of '{spec.service}' has version"
                                f" '{spec.stable.version}'{_tags(spec.stable)}; its versions: {', '.join(versions) or 'none'}"))
    if not spec.wait_for_candidate and not any(_matches(t, spec.candidate) for t in tags):
        out.append(FieldProblem("spec.candidate.version", f"no instance of '{spec.service}' has version"
                                f" '{spec.candidate.version}'{_tags(spec.candidate)} (its versions:"
                                f" {', '.join(versions) or 'none'}); start it first, or set waitForCandidate: true"))
    for other in others:
        if other.kind == "Rollout" and other.name != res.name and isinstance(other.spec, RolloutSpec) \
                and other.spec.service == spec.service:
            out.append(FieldProblem("spec.service", f"Rollout {other.name} already releases '{spec.service}';"
                                    " one rollout per service: delete it or edit that one"))
        elif owner_of(other) is None and spec.service in _routed_services(other):
            out.append(FieldProblem("spec.service", f"{other.kind} {other.name} routes '{spec.service}' and would fight"
                                    " the rollout's weights; delete it (or remove"
                                    f" '{spec.service}' from its destinations) while the rollout runs"))
    return out


def _tags(v: Version) -> str:
    return f" with tags {v.tags}" if v.tags else ""


def route_problems(res: Resource, others: Sequence[Resource]) -> list[FieldProblem]:
    """A user route for a service a rollout owns."""
    if owner_of(res) is not None:
        return []
    out = []
    for i, d in enumerate(res.spec.destinations if isinstance(res.spec, SelectorSpec) else []):
        service = d.match.get("service")
        for other in others:
            if other.kind == "Rollout" and isinstance(other.spec, RolloutSpec) and other.spec.service == service:
                out.append(FieldProblem(f"spec.destinations[{i}]", f"Rollout {other.name} owns the routing of"
                                        f" '{service}' (it writes HTTPRoute rollout-{other.name}); delete the"
                                        " rollout first (once it is done), then apply this route"))
    return out


def check(res: Resource, ctx: ControlPlaneContext, pending: Sequence[Resource]) -> None:
    """The ContextValidator installed by :func:`meshline.rollouts.install`."""
    if res.kind == "Rollout":
        others = [r for r in _merged(ctx, res.mesh, pending) if r.key != res.key]
        problems = rollout_problems(res, others)
    elif res.kind in ("HTTPRoute", "TCPRoute"):
        problems = route_problems(res, [r for r in _merged(ctx, res.mesh, pending) if r.key != res.key])
    else:
        return
    if problems:
        raise ValidationError(problems, context=str(res.key))
