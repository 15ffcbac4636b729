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

from pydantic import Field

from meshline.core.errors import FieldProblem
from meshline.core.resource import KindInfo, Resource
from meshline.core.selectors import SelectorSpec
from meshline.policies.httproute.api import Backend
from meshline.policies.httproute.checks import backend_problems, destination_problems


class TCPRouteSpec(SelectorSpec):
    backends: list[Backend] = Field(min_length=1)


def route_problems(res: Resource) -> list[FieldProblem]:
    spec = res.spec
    assert isinstance(spec, TCPRouteSpec)
    return [*destination_problems(spec), *backend_problems("spec.backends", spec.backends)]


def _backends_column(r: Resource) -> str:
    assert isinstance(r.spec, TCPRouteSpec)
    service = ",".join(d.describe() for d in r.spec.destinations)
    return " ".join(f"{b.describe(service)}:{b.weight}" for b in r.spec.backends)


KIND = KindInfo(
    kind="TCPRoute",
    plural="tcproutes",
    spec=TCPRouteSpec,
    summary="L4 routing to a service: connections split over versions or services by weight",
    is_policy=True,
    validators=(route_problems,),
    columns={"BACKENDS": _backends_column},
)
