"""Services a policy names that have no instances: a typo (`inventroy`) would otherwise take
traffic down silently (`no healthy upstream`).

Applied anyway (deploy order must not matter: a route may come before its service), but
`apply` answers with a warning naming the closest known service, and `inspect` repeats it
for the policies that apply to a dataplane. Pure functions over resources."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from meshline.core.dataplane import DataplaneSpec
from meshline.core.resource import Resource
from meshline.core.schema import did_you_mean
from meshline.core.selectors import ANY

# Where a service name in a policy's spec means "traffic goes to / comes from this service".
REFERRING = ("backends", "destinations", "sources", "mirror", "targets")


def known_services(resources: Iterable[Resource]) -> set[str]:
    out: set[str] = set()
    for r in resources:
        if r.kind == "Dataplane" and isinstance(r.spec, DataplaneSpec):
            out.update(r.spec.services())
        elif r.kind == "ExternalService":  # policies select it by name, as a service
            out.add(r.name)
    return out


def service_refs(doc: Any, path: str = "spec", referring: bool = False) -> Iterator[tuple[str, str]]:
    """(field path, service) for every ``service`` under one of :data:`REFERRING`."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            here = f"{path}.{key}"
            if key == "service" and referring and isinstance(value, str) and value != ANY:
                yield here, value
            else:
                yield from service_refs(value, here, referring or key in REFERRING)
    elif isinstance(doc, list):
        for i, item in enumerate(doc):
            yield from service_refs(item, f"{path}[{i}]", referring)


def warnings_for(res: Resource, known: set[str]) -> list[str]:
    """One line per service ``res`` names that no dataplane of its mesh serves."""
    if res.kind in ("Dataplane", "Mesh"):
        return []
    out = []
    for path, service in service_refs(res.spec.to_json()):
        if service in known:
            continue
        guess = did_you_mean(service, sorted(known))
        hint = f"; did you mean '{guess}'?" if guess else " yet"
        out.append(f"{path}: service '{service}' has no instances in mesh {res.mesh}{hint}")
    return out
