"""SMI ``TrafficSplit`` (split.smi-spec.io v1alpha1-v1alpha4) -> HTTPRoute or TCPRoute.

The root ``spec.service`` is the destination; each backend service becomes a weighted
backend (``orders-v2`` -> ``orders`` subset ``version=v2`` by the shared convention). The
result is a TCPRoute when the root service is known to speak tcp, else an HTTPRoute.
v1alpha1 weights are Kubernetes quantities (``"900m"``, ``1``): they keep their ratio.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from meshline.core.resource import KindRegistry, Resource
from meshline.policies.translate.common import KnownServices, Translation, as_list, as_mapping

GROUP = "split.smi-spec.io"
_QUANTITY = re.compile(r"^(\d+)(m?)$")


def is_traffic_split(doc: Mapping[str, Any]) -> bool:
    api = doc.get("apiVersion")
    return isinstance(api, str) and api.startswith(GROUP + "/") and doc.get("kind") == "TrafficSplit"


def _milli_weight(t: Translation, value: Any, path: str) -> int:
    """A weight in thousandths, so "500m" and 1 can be mixed as v1alpha1 allows."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value * 1000
    m = _QUANTITY.match(str(value).strip()) if isinstance(value, str) else None
    if m is None:
        t.refuse(path, f"'{value}' is not a weight; write a whole number (or a quantity such as '500m')")
        return 0
    return int(m.group(1)) * (1 if m.group(2) else 1000)


def translate_traffic_split(doc: Mapping[str, Any], kinds: KindRegistry, known: KnownServices) -> list[Resource]:
    t = Translation(doc, known)
    t.read_metadata()
    spec = as_mapping(doc.get("spec"), "spec", t)
    if spec.get("matches"):
        t.refuse(
            "spec.matches",
            "HTTPRouteGroup/TCPRoute references cannot be translated; write a Meshline HTTPRoute with"
            " rules[].matches instead",
        )
    for key in sorted(set(spec) - {"service", "backends", "matches"}):
        t.refuse(f"spec.{key}", "is not a TrafficSplit field Meshline knows; remove it")
    root = t.service_name(spec.get("service"), "spec.service")
    backends: list[dict[str, Any]] = []
    refs = as_list(spec.get("backends"), "spec.backends", t)
    if not refs:
        t.refuse("spec.backends", "is required: list the services to split between")
    weights = [_milli_weight(t, as_mapping(b, f"spec.backends[{i}]", t).get("weight"), f"spec.backends[{i}].weight")
               for i, b in enumerate(refs)]
    # whole-number weights stay as written; only quantities need thousandths
    scale = 1000 if all(w % 1000 == 0 for w in weights) else 1
    for i, (ref, weight) in enumerate(zip(refs, weights, strict=True)):
        ref = as_mapping(ref, f"spec.backends[{i}]", t)
        name = t.service_name(ref.get("service"), f"spec.backends[{i}].service")
        if name is None or root is None:
            continue
        service, tags = t.backend(name, [root])
        backends.append({"service": service, **({"tags": tags} if tags else {}), "weight": weight // scale})
    tcp = root is not None and t.known_services(t.mesh).get(root) == "tcp"
    selector = {"destinations": [{"match": {"service": root}}]}
    native: dict[str, Any] = {
        "kind": "TCPRoute" if tcp else "HTTPRoute",
        "mesh": t.mesh,
        "name": t.name,
        "spec": {**selector, "backends": backends} if tcp else {**selector, "rules": [{"backends": backends}]},
    }
    return t.finish(kinds, native)
