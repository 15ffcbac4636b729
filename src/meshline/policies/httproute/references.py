"""Apply-time checks of HTTPRoute/TCPRoute against the mesh's dataplanes (ControlPlaneContext.validators).

Routes may be applied before the services they name exist (deploy order should not
matter), so a service with no instances yet is accepted. Refused are only clear
mistakes about services that do exist: a subset tag no instance has (traffic would get
503s), and a route kind that can never apply to the service's protocol.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

from meshline.core.dataplane import DEFAULT_PROTOCOL, DataplaneSpec
from meshline.core.errors import FieldProblem, ValidationError
from meshline.core.resource import Resource
from meshline.core.selectors import ANY, SelectorSpec
from meshline.policies.httproute.api import HTTPRouteSpec
from meshline.render.envoy import L7_PROTOCOLS

if TYPE_CHECKING:
    from meshline.controlplane.context import ControlPlaneContext

ROUTE_KINDS = ("HTTPRoute", "TCPRoute")
Instances = Mapping[str, Sequence[Mapping[str, str]]]  # service -> tags of each instance


def instances_of(dataplanes: Iterable[Resource]) -> dict[str, list[Mapping[str, str]]]:
    out: dict[str, list[Mapping[str, str]]] = {}
    for dp in dataplanes:
        if isinstance(dp.spec, DataplaneSpec):
            for inbound in dp.spec.inbound:
                out.setdefault(inbound.service, []).append(inbound.tags)
    return out


def _destinations(spec: SelectorSpec) -> list[str] | None:
    """The services a route is for; None when some destination is a wildcard."""
    services = [d.match.get("service", ANY) for d in spec.destinations]
    return None if ANY in services else services


def _targets(res: Resource) -> Iterator[tuple[str, str | None, Mapping[str, str]]]:
    """(field path, service or None for "the destination", tags) of every backend and mirror."""
    spec = res.spec
    if isinstance(spec, HTTPRouteSpec):
        for i, rule in enumerate(spec.rules):
            for k, b in enumerate(rule.backends):
                yield f"spec.rules[{i}].backends[{k}]", b.service, b.tags
            for k, m in enumerate(rule.mirrors):
                yield f"spec.rules[{i}].mirrors[{k}]", m.service, m.tags
    else:
        for k, b in enumerate(getattr(spec, "backends", [])):
            yield f"spec.backends[{k}]", b.service, b.tags


def _subset_problem(path: str, service: str, tags: Mapping[str, str], instances: Instances) -> FieldProblem | None:
    found = instances.get(service)
    if not found or not tags or any(all(t.get(k) == v for k, v in tags.items()) for t in found):
        return None
    wanted = ", ".join(f"{k}={v}" for k, v in sorted(tags.items()))
    have = "; ".join(
        f"{k}=" + ",".join(sorted({t[k] for t in found if k in t})) for k in sorted(tags) if any(k in t for t in found)
    )
    return FieldProblem(
        f"{path}.tags",
        f"no instance of service '{service}' has {wanted}" + (f" (its instances have {have})" if have else "")
        + "; fix the tags or start such an instance first",
    )


def _protocol(instances: Instances, service: str) -> str | None:
    found = instances.get(service)
    if not found:
        return None
    protocols = {t.get("protocol", DEFAULT_PROTOCOL) for t in found}
    return protocols.pop() if len(protocols) == 1 else DEFAULT_PROTOCOL


def reference_problems(res: Resource, instances: Instances) -> list[FieldProblem]:
    spec = res.spec
    assert isinstance(spec, SelectorSpec)
    problems: list[FieldProblem] = []
    destinations = _destinations(spec)
    for i, service in enumerate(destinations or []):
        protocol = _protocol(instances, service)
        if protocol is None:
            continue
        if res.kind == "HTTPRoute" and protocol not in L7_PROTOCOLS:
            problems.append(FieldProblem(
                f"spec.destinations[{i}]",
                f"service '{service}' speaks {protocol}, so an HTTPRoute never applies to it;"
                " use a TCPRoute, or tag its instances protocol: http",
            ))
        elif res.kind == "TCPRoute" and protocol in L7_PROTOCOLS:
            problems.append(FieldProblem(
                f"spec.destinations[{i}]",
                f"service '{service}' speaks {protocol}, so a TCPRoute never applies to it; use an HTTPRoute",
            ))
    for path, backend_service, tags in _targets(res):
        for target in [backend_service] if backend_service else (destinations or []):
            if (problem := _subset_problem(path, target, tags, instances)) is not None:
                problems.append(problem)
    return problems


def check_route_references(res: Resource, ctx: ControlPlaneContext, pending: Sequence[Resource]) -> None:
    """ControlPlaneContext validator: the mesh's dataplanes as stored, overlaid by this apply's."""
    if res.kind not in ROUTE_KINDS:
        return
    dataplanes = {r.key: r for r in ctx.reconciler.resources.get(res.mesh, {}).values() if r.kind == "Dataplane"}
    dataplanes.update({r.key: r for r in pending if r.kind == "Dataplane" and r.mesh == res.mesh})
    problems = reference_problems(res, instances_of(dataplanes.values()))
    if problems:
        raise ValidationError(problems)
