"""Schema field types and destination rules several policy kinds share."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import timedelta
from typing import Annotated, Any

from pydantic import AfterValidator

from meshline.core.errors import FieldProblem
from meshline.core.resource import Resource
from meshline.core.schema import Duration
from meshline.core.selectors import SelectorSpec


def _positive(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError("must be longer than 0 (e.g. '250ms', '5s')")
    return value


def _at_least_one(value: int) -> int:
    if value < 1:
        raise ValueError("must be 1 or more")
    return value


def _percent(value: float) -> float:
    if not 0 <= value <= 100:
        raise ValueError("must be a percentage from 0 to 100")
    return value


# An HTTP header name as HTTP/2 sends it (lower case token characters).
HEADER_NAME_RE = re.compile(r"^[a-z0-9!#$%&'*+.^_`|~-]+$")

PositiveDuration = Annotated[Duration, AfterValidator(_positive)]
PositiveInt = Annotated[int, AfterValidator(_at_least_one)]
Percent = Annotated[float, AfterValidator(_percent)]


def sets_something(values: Mapping[str, Any]) -> bool:
    """True if a dumped (exclude_none) conf has any leaf value: ``{"http": {}}`` sets nothing."""
    return any(not isinstance(v, Mapping) or sets_something(v) for v in values.values())


def service_only_destinations(res: Resource) -> list[FieldProblem]:
    """Resilience policies configure a whole service's clusters, so destinations name services only."""
    spec = res.spec
    assert isinstance(spec, SelectorSpec)
    problems = []
    for i, selector in enumerate(spec.destinations):
        for tag in sorted(set(selector.match) - {"service"}):
            problems.append(
                FieldProblem(
                    f"spec.destinations[{i}].match.{tag}",
                    f"{res.kind} selects destinations by service only; remove '{tag}'"
                    " (to treat one version differently, route it to its own service or subset with"
                    " HTTPRoute and select that service)",
                )
            )
    return problems


# Where JWTAuthentication leaves a verified token's claims (Envoy's jwt_authn filter, dynamic
# metadata): TrafficPermission rules on claims read them there, never from a header a caller set.
JWT_FILTER = "envoy.filters.http.jwt_authn"
JWT_PAYLOAD_KEY = "jwt_payload"
