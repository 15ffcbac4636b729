"""Route backends: which instances of which service a rule sends to (HTTPRoute, TCPRoute)."""

from __future__ import annotations

from collections.abc import Iterator

from pydantic import Field, field_validator

from meshline.core.dataplane import check_tags
from meshline.core.errors import FieldProblem
from meshline.core.schema import Name, Spec
from meshline.core.selectors import SelectorSpec

MAX_WEIGHT = 1_000_000


def backend_tags(v: dict[str, str]) -> dict[str, str]:
    if "service" in v:
        raise ValueError("name the service with 'service', not in tags (tags pick instances of it)")
    check_tags(v)
    return v


class Backend(Spec):
    """Instances of ``service`` (default: the service called) that have every tag in ``tags``."""

    service: Name | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    weight: int = Field(default=1, ge=0, le=MAX_WEIGHT)

    _t = field_validator("tags")(classmethod(lambda cls, v: backend_tags(v)))

    def describe(self, default_service: str) -> str:
        tags = ",".join(f"{k}={v}" for k, v in sorted(self.tags.items()))
        return (self.service or default_service) + (f"[{tags}]" if tags else "")


def backend_problems(path: str, backends: list[Backend]) -> Iterator[FieldProblem]:
    if backends and sum(b.weight for b in backends) == 0:
        yield FieldProblem(path, "weights add up to 0, so no request could be sent; give a backend a weight above 0")
    seen: dict[tuple[str | None, tuple[tuple[str, str], ...]], int] = {}
    for k, b in enumerate(backends):
        key = (b.service, tuple(sorted(b.tags.items())))
        if key in seen:
            yield FieldProblem(f"{path}[{k}]", f"is the same backend as backends[{seen[key]}]; list it once with the summed weight")
        seen.setdefault(key, k)


def destination_problems(spec: SelectorSpec) -> Iterator[FieldProblem]:
    for i, dst in enumerate(spec.destinations):
        for tag in dst.match:
            if tag != "service":
                yield FieldProblem(
                    f"spec.destinations[{i}].match.{tag}",
                    "a route's destination is a whole service; pick instances by tags in"
                    " spec.rules[].backends[].tags instead",
                )
