"""Apply-time checks of a MeshGatewayRoute against its gateways: the parent, the listener, the
protocol and the hostnames must fit, or nothing is written (each problem says what would)."""

from __future__ import annotations

from meshline.core.errors import FieldProblem
from meshline.core.resource import Resource, spec_as
from meshline.policies.gateway.api import (
    ATTACHES,
    Listener,
    MeshGatewayRouteSpec,
    MeshGatewaySpec,
    effective_hostnames,
)
from meshline.render.policy_kind import MeshCheck, MeshView

GATEWAY_KIND = "MeshGateway"


def _fits(lst: Listener, spec: MeshGatewayRouteSpec) -> str | None:
    """Why the route cannot attach to the listener (None: it can)."""
    if spec.protocol not in ATTACHES[lst.protocol]:
        wanted = sorted(p for p, kinds in ATTACHES.items() if spec.protocol in kinds)
        return (f"listener '{lst.name}' is {lst.protocol} and a {spec.protocol} route needs"
                f" {' or '.join(wanted)}")  # fmt: skip
    if spec.hostnames and lst.hostname and not effective_hostnames(lst.hostname, spec.hostnames):
        return (f"listener '{lst.name}' serves only {lst.hostname}, none of the route's hostnames"
                f" ({', '.join(spec.hostnames)})")  # fmt: skip
    return None


def parent_problems(res: Resource, view: MeshView) -> list[FieldProblem]:
    spec = spec_as(res, MeshGatewayRouteSpec)
    gateways = {g.name: g for g in view.of_kind(GATEWAY_KIND)}
    problems: list[FieldProblem] = []
    for i, parent in enumerate(spec.parents):
        path = f"spec.parents[{i}]"
        gw = gateways.get(parent.gateway)
        if gw is None:
            known = ", ".join(sorted(gateways)) or "none yet"
            problems.append(FieldProblem(f"{path}.gateway", f"no MeshGateway (or Gateway) '{parent.gateway}' in mesh"
                                         f" {view.mesh} (known: {known}); apply the gateway first, or fix the name"))  # fmt: skip
            continue
        listeners = spec_as(gw, MeshGatewaySpec).listeners
        if parent.listener is not None:
            lst = next((x for x in listeners if x.name == parent.listener), None)
            if lst is None:
                names = ", ".join(x.name for x in listeners)
                problems.append(FieldProblem(f"{path}.listener", f"gateway '{gw.name}' has no listener"
                                             f" '{parent.listener}' (its listeners: {names})"))  # fmt: skip
            elif (why := _fits(lst, spec)) is not None:
                problems.append(FieldProblem(f"{path}.listener", f"{why}; attach the route to another listener"))
            continue
        whys = [_fits(x, spec) for x in listeners]
        if all(whys):
            problems.append(FieldProblem(path, f"no listener of gateway '{gw.name}' takes this route ("
                                         + "; ".join(w for w in whys if w) + "); add a listener or fix the route"))  # fmt: skip
    return problems


PARENTS = MeshCheck(parent_problems)
