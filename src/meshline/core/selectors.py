"""The one selector model every policy kind shares.

A policy says which traffic it applies to with ``sources`` (who sends) and
``destinations`` (who receives), each a list of tag matches::

    sources:      [{match: {service: web}}]
    destinations: [{match: {service: orders, version: v2}}]

A tag value of ``*`` matches any value. A missing list means "any".

Precedence, when several policies of one kind match the same traffic, is decided
by :func:`rank`: the policy whose matching selectors name more exact tags wins
(destination first, because it is what the policy configures, then source);
``service`` counts more than other tags; ties go to the name that sorts first.
This is what ``meshline inspect`` reports as the reason a policy applies.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import Field, field_validator

from meshline.core.schema import Spec

if TYPE_CHECKING:
    from meshline.core.resource import Resource

ANY = "*"


class TagSelector(Spec):
    match: dict[str, str] = Field(default_factory=dict)

    @field_validator("match")
    @classmethod
    def _check(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in v.items():
            if not key or not value:
                raise ValueError("tag names and values must not be empty; use '*' to match any value")
        return v

    def matches(self, tags: Mapping[str, str]) -> bool:
        return all(value == ANY or tags.get(key) == value for key, value in self.match.items())

    def specificity(self) -> int:
        score = 0
        for key, value in self.match.items():
            if value != ANY:
                score += 100 if key == "service" else 1
        return score

    def describe(self) -> str:
        return ",".join(f"{k}={v}" for k, v in sorted(self.match.items())) or "*"


ANY_SELECTOR = TagSelector(match={"service": ANY})


class SelectorSpec(Spec):
    """Base for policy specs: who sends (sources) and who receives (destinations)."""

    sources: list[TagSelector] = Field(default_factory=lambda: [ANY_SELECTOR])
    destinations: list[TagSelector] = Field(default_factory=lambda: [ANY_SELECTOR])


@dataclass(frozen=True)
class Match:
    """Why a policy applies: the selectors that matched and the rank they give."""

    policy: Resource
    source: TagSelector
    destination: TagSelector

    @property
    def rank(self) -> tuple[int, int, str]:
        # higher specificity first; then name ascending (negated for max())
        return (self.destination.specificity(), self.source.specificity(), self.policy.name)

    def reason(self) -> str:
        return f"from {self.source.describe()} to {self.destination.describe()}"


def _best(selectors: Sequence[TagSelector], tag_sets: Iterable[Mapping[str, str]]) -> TagSelector | None:
    best: TagSelector | None = None
    for sel in selectors:
        if any(sel.matches(tags) for tags in tag_sets) and (
            best is None or sel.specificity() > best.specificity()
        ):
            best = sel
    return best


def match_policy(
    policy: Resource,
    source_tags: Sequence[Mapping[str, str]],
    destination_tags: Mapping[str, str],
) -> Match | None:
    spec = policy.spec
    assert isinstance(spec, SelectorSpec)
    src = _best(spec.sources, source_tags)
    if src is None:
        return None
    dst = _best(spec.destinations, [destination_tags])
    if dst is None:
        return None
    return Match(policy, src, dst)


def matching(
    policies: Iterable[Resource],
    source_tags: Sequence[Mapping[str, str]],
    destination_tags: Mapping[str, str],
) -> list[Match]:
    """All policies that apply, most specific first."""
    found = [m for p in policies if (m := match_policy(p, source_tags, destination_tags))]
    found.sort(key=lambda m: (-m.rank[0], -m.rank[1], m.rank[2]))
    return found


def best_policy(
    policies: Iterable[Resource],
    source_tags: Sequence[Mapping[str, str]],
    destination_tags: Mapping[str, str],
) -> Match | None:
    found = matching(policies, source_tags, destination_tags)
    return found[0] if found else None
