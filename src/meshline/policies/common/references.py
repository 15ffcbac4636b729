"""Apply-time checks of routes (HTTPRoute, TCPRoute) against the mesh's dataplanes: their
``MeshCheck``. A route spec shows what it references through :class:`RouteSpec`.

Routes may be applied before the services they name exist (deploy order should not
matter), so a service with no instances yet is accepted. Refused are only clear
mistakes about services that do exist: a subset tag no instance has (traffic would get
503s), and a route kind that can never apply to the service's protocol.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol, runtime_checkable

from meshline.core.dataplane import DEFAULT_PROTOCOL, DataplaneSpec, service_protocol
from meshline.core.errors import FieldProblem
from meshline.core.resource import Resource
from meshline.core.selectors import ANY, SelectorSpec
from meshline.render.policy_kind import MeshCheck, MeshView

# (field path, service or None for "the destination", tags) of a backend or mirror
Target = tuple[str, str | None, Mapping[str, str]]
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


@runtime_checkable
class RouteSpec(Protocol):
    def route_targets(self) -> Iterable[Target]:
        """Every backend and mirror the route sends to."""
        ...

    def protocol_mismatch(self, service: str, protocol: str) -> str | None:
        """Why the route can never apply to ``service`` speaking ``protocol`` (None: it can)."""
        ...


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
    return service_protocol(t.get("protocol", DEFAULT_PROTOCOL) for t in found)


def reference_problems(res: Resource, instances: Instances) -> list[FieldProblem]:
    spec = res.spec
    if not isinstance(spec, SelectorSpec) or not isinstance(spec, RouteSpec):
        return []
    problems: list[FieldProblem] = []
    destinations = _destinations(spec)
    for i, service in enumerate(destinations or []):
        protocol = _protocol(instances, service)
        if protocol is None:
            continue
        mismatch = spec.protocol_mismatch(service, protocol)
        if mismatch is not None:
            problems.append(FieldProblem(f"spec.destinations[{i}]", mismatch))
    for path, backend_service, tags in spec.route_targets():
        for target in [backend_service] if backend_service else (destinations or []):
            if (problem := _subset_problem(path, target, tags, instances)) is not None:
                problems.append(problem)
    return problems


def _check(res: Resource, view: MeshView) -> list[FieldProblem]:
    """The mesh's dataplanes as the apply leaves them."""
    return reference_problems(res, instances_of(view.of_kind("Dataplane")))


ROUTE_REFERENCES = MeshCheck(_check)
