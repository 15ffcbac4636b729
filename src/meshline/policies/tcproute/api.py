"""TCPRoute: split the connections to a TCP service over versions (or other services) by weight.

    kind: TCPRoute
    mesh: default
    name: payments-split
    spec:
      sources: [{match: {service: web}}]
      destinations: [{match: {service: payments}}]
      backends:
        - {tags: {version: v1}, weight: 90}
        - {tags: {version: v2}, weight: 10}

Each connection goes to one backend for its whole life; weights share connections, not bytes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from pydantic import Field

from meshline.core.errors import FieldProblem
from meshline.core.resource import KindInfo, Resource, spec_as
from meshline.core.selectors import SelectorSpec
from meshline.policies.common.backends import Backend, backend_problems, destination_problems
from meshline.render.defaults import L7_PROTOCOLS


class TCPRouteSpec(SelectorSpec):
    backends: list[Backend] = Field(min_length=1)

    # -- common.references.RouteSpec: what the apply-time reference check reads
    def route_targets(self) -> Iterator[tuple[str, str | None, Mapping[str, str]]]:
        for k, b in enumerate(self.backends):
            yield f"spec.backends[{k}]", b.service, b.tags

    def protocol_mismatch(self, service: str, protocol: str) -> str | None:
        if protocol not in L7_PROTOCOLS:
            return None
        return f"service '{service}' speaks {protocol}, so a TCPRoute never applies to it; use an HTTPRoute"


def route_problems(res: Resource) -> list[FieldProblem]:
    spec = spec_as(res, TCPRouteSpec)
    return [*destination_problems(spec), *backend_problems("spec.backends", spec.backends)]


def _backends_column(r: Resource) -> str:
    spec = spec_as(r, TCPRouteSpec)
    service = ",".join(d.describe() for d in spec.destinations)
    return " ".join(f"{b.describe(service)}:{b.weight}" for b in spec.backends)


KIND = KindInfo(
    kind="TCPRoute",
    plural="tcproutes",
    spec=TCPRouteSpec,
    summary="L4 routing to a service: connections split over versions or services by weight",
    is_policy=True,
    validators=(route_problems,),
    columns={"BACKENDS": _backends_column},
)
