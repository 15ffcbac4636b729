"""The policy framework: what a policy kind declares, and how rendering runs it.

A policy kind is one :class:`PolicyKind` value in its own package (``policies/<kind>/``)
and one line in ``meshline.policies.KINDS``. It declares:

* its schema and single-resource checks (``info``: the :class:`KindInfo` the API decodes
  and validates with) and its typed spec class (``spec``);
* its targets: the sections it shapes (an ``outbound`` and/or ``inbound`` configurer) and,
  within them, which parts (``shapes``: routes, clusters, HTTP filters ...);
* its merge rule (:class:`Merge`): which of the matching policies apply, in what order;
* its apply-time checks against the rest of the mesh (``mesh_checks``);
* what telemetry may blame it for (``explains``) and which kinds configure before it
  (``after``: declared, not numbered).

The framework resolves the policies for a section once (the shared selector precedence
of :mod:`meshline.core.selectors`), checks their spec type once, and hands the configurer
a :class:`Resolved` of typed specs. Configurers only mutate the protos of the section
they are given (so rendering stays pure and sections can be shared between callers).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Generic, Literal, TypeVar

from meshline.core.errors import FieldProblem, MeshlineError
from meshline.core.resource import KindInfo, Resource, ResourceKey
from meshline.core.selectors import Match, SelectorSpec, TagSelector, matching
from meshline.render.mesh_snapshot import MeshSnapshot
from meshline.render.plugins import Plugin
from meshline.render.sections import InboundSection, OutboundSection

S = TypeVar("S", bound=SelectorSpec)

Target = Literal["inbound", "outbound"]
# The parts of a section a configurer may change (documentation, and what inspect says).
Shape = Literal["route", "cluster", "endpoints", "http-filter", "network-filter", "listener"]
# Failure causes telemetry's explanations attribute to policies (see telemetry.explain).
Cause = Literal["timeout", "retry", "rate-limit", "permission", "authentication", "fault", "circuit-breaker",
                "health-check", "route"]


class PolicyKindError(MeshlineError):
    """A policy kind declaration is inconsistent (unknown ``after`` kind, a cycle)."""


class Merge(enum.Enum):
    """Which of the policies matching a section apply."""

    # One policy: the most specific match (destination, then source; ties by name).
    MOST_SPECIFIC = "the most specific policy applies"
    # Every matching policy, most specific first (HTTPRoute: rules tried in that order).
    ALL_BY_PRECEDENCE = "every matching policy applies, most specific first"
    # Inbound kinds enforced by the destination: every policy whose destinations select the
    # inbound, in name order; the configurer tells callers apart (by mTLS identity).
    PER_CALLER = "every policy selecting the destination; callers resolved per rule"


@dataclass(frozen=True)
class Matched(Generic[S]):
    """One policy that applies, with its typed spec and why it applies."""

    match: Match
    spec: S

    @property
    def policy(self) -> Resource:
        return self.match.policy

    def reason(self) -> str:
        return self.match.reason()


@dataclass(frozen=True)
class Resolved(Generic[S]):
    """The policies of one kind that apply to one section, in the kind's merge order."""

    matches: tuple[Matched[S], ...]

    @property
    def best(self) -> Matched[S]:
        return self.matches[0]

    def __bool__(self) -> bool:
        return bool(self.matches)


OutboundConfigurer = Callable[[OutboundSection, Resolved[S], MeshSnapshot], None]
InboundConfigurer = Callable[[InboundSection, Resolved[S], MeshSnapshot], None]


@dataclass(frozen=True)
class MeshView:
    """One mesh's resources as they would be once the apply being checked is written.

    Built once per apply and mesh by the control plane (the stored resources with the
    apply's documents over them), so a check costs no store read and an apply of many
    documents builds it once."""

    mesh: str
    resources: Mapping[ResourceKey, Resource]

    @classmethod
    def build(cls, mesh: str, stored: Iterable[Resource], pending: Iterable[Resource] = ()) -> MeshView:
        current = {r.key: r for r in stored if r.mesh == mesh}
        current.update({r.key: r for r in pending if r.mesh == mesh})
        return cls(mesh, current)

    @cached_property
    def _by_kind(self) -> dict[str, list[Resource]]:
        out: dict[str, list[Resource]] = {}
        for r in self.resources.values():
            out.setdefault(r.kind, []).append(r)
        return out

    def of_kind(self, kind: str) -> list[Resource]:
        return self._by_kind.get(kind, [])

    @property
    def kinds(self) -> frozenset[str]:
        return frozenset(self._by_kind)

    def with_resource(self, res: Resource) -> MeshView:
        """This view with ``res`` in it (a single write checked outside an apply)."""
        if self.resources.get(res.key) is res:
            return self
        return MeshView(self.mesh, {**self.resources, res.key: res})


@dataclass(frozen=True)
class MeshCheck:
    """An apply-time check of one resource against the rest of its mesh.

    Runs when a resource of the kind declaring it is written, and for any other write that
    ``also`` accepts (a Retry's check also runs when a Timeout is applied). ``also`` is a
    cheap test of the resource alone: the mesh view (a copy of the mesh) is only built
    when some check runs. Returns problems, each with a field path and a fix."""

    check: Callable[[Resource, MeshView], list[FieldProblem]]
    also: Callable[[Resource], bool] | None = None

    def runs_on(self, kind: str, res: Resource) -> bool:
        """Whether this check, declared by ``kind``, runs when ``res`` is written."""
        return res.kind == kind or (self.also is not None and self.also(res))


@dataclass(frozen=True, eq=False)
class PolicyKind(Generic[S]):
    info: KindInfo
    spec: type[S]
    merge: Merge
    shapes: frozenset[Shape]
    outbound: OutboundConfigurer[S] | None = None
    inbound: InboundConfigurer[S] | None = None
    after: tuple[str, ...] = ()  # kinds whose configurers run before this one's
    mesh_checks: tuple[MeshCheck, ...] = ()
    explains: frozenset[Cause] = frozenset()
    # Run the configurer even when no policy matches (TrafficPermission: a mesh default deny).
    runs_unmatched: bool = False
    # The inbound configurer also shapes a gateway's entry listeners (their callers are outside
    # the mesh: only kinds that need no caller identity).
    on_gateway: bool = False
    on_egress: bool = False  # see Plugin.on_egress
    doc: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.info.spec is not self.spec:
            raise PolicyKindError(f"{self.name}: info.spec {self.info.spec.__name__} is not {self.spec.__name__}")
        if self.outbound is None and self.inbound is None:
            raise PolicyKindError(f"{self.name}: needs an outbound or an inbound configurer")

    @property
    def name(self) -> str:
        return self.info.kind

    @property
    def targets(self) -> frozenset[Target]:
        found: set[Target] = set()
        if self.outbound is not None:
            found.add("outbound")
        if self.inbound is not None:
            found.add("inbound")
        return frozenset(found)

    # -- resolution (done once per section, before the configurer runs) -------------------
    def _typed(self, matches: Iterable[Match]) -> Resolved[S]:
        out = []
        for m in matches:
            spec = m.policy.spec
            if not isinstance(spec, self.spec):
                raise PolicyKindError(f"{self.name} {m.policy.name}: spec is {type(spec).__name__}, not {self.spec.__name__}")
            out.append(Matched(m, spec))
        return Resolved(tuple(out))

    def resolve_outbound(self, section: OutboundSection, mesh: MeshSnapshot) -> Resolved[S]:
        policies = mesh.of_kind(self.name)
        if not policies:
            return Resolved(())
        found = matching(policies, section.source_tags, {"service": section.service})
        return self._typed(found[:1] if self.merge is Merge.MOST_SPECIFIC else found)

    def resolve_inbound(self, section: InboundSection, mesh: MeshSnapshot) -> Resolved[S]:
        policies = mesh.of_kind(self.name)
        if not policies or section.inbound is None:
            return Resolved(())
        tags = section.inbound.tags
        if self.merge is Merge.PER_CALLER:
            found = [m for p in policies if (m := _for_destination(p, tags)) is not None]
        else:  # callers are unknown before the request: any caller matches
            found = [m for m in (_for_destination(p, tags) for p in policies) if m is not None]
            found.sort(key=lambda m: (-m.rank[0], -m.rank[1], m.rank[2]))
            found = found[:1] if self.merge is Merge.MOST_SPECIFIC else found
        return self._typed(found)

    @cached_property
    def step(self) -> Plugin:
        """The render step that resolves and then configures (one object: render memoizes by it)."""
        return Plugin(
            kind=self.info,
            outbound=self._run_outbound if self.outbound is not None else None,
            inbound=self._run_inbound if self.inbound is not None else None,
            on_gateway=self.on_gateway,
            on_egress=self.on_egress,
        )

    def _run_outbound(self, section: OutboundSection, mesh: MeshSnapshot) -> None:
        assert self.outbound is not None
        if not self.runs_unmatched and not mesh.of_kind(self.info.kind):
            return  # the common case: no policy of this kind in the mesh
        resolved = self.resolve_outbound(section, mesh)
        if resolved or self.runs_unmatched:
            self.outbound(section, resolved, mesh)

    def _run_inbound(self, section: InboundSection, dataplane: Resource, mesh: MeshSnapshot) -> None:
        assert self.inbound is not None
        if not self.runs_unmatched and not mesh.of_kind(self.info.kind):
            return
        resolved = self.resolve_inbound(section, mesh)
        if resolved or self.runs_unmatched:
            self.inbound(section, resolved, mesh)


def _for_destination(policy: Resource, tags: Mapping[str, str]) -> Match | None:
    """The policy's most specific destination selecting ``tags``, with its most specific source."""
    spec = policy.spec
    if not isinstance(spec, SelectorSpec):
        return None
    best: TagSelector | None = None
    for sel in spec.destinations:
        if sel.matches(tags) and (best is None or sel.specificity() > best.specificity()):
            best = sel
    if best is None:
        return None
    return Match(policy, max(spec.sources, key=lambda s: s.specificity()), best)


def record(section: OutboundSection | InboundSection, matched: Matched[Any], note: str = "") -> None:
    """Tell ``meshline inspect`` that ``matched`` shaped ``section`` (and how, in ``note``)."""
    reason = matched.reason() + (f"; {note}" if note else "")
    section.note(matched.policy.kind, matched.policy.name, reason)


def run_mesh_checks(res: Resource, view: MeshView, checks: Iterable[tuple[str, MeshCheck]]) -> list[FieldProblem]:
    """The problems of ``res`` found by the (kind, check) pairs that run on its writes."""
    found: list[FieldProblem] = []
    for kind, check in checks:
        if check.runs_on(kind, res):
            found.extend(check.check(res, view))
    return found


def in_order(kinds: Sequence[PolicyKind[Any]]) -> list[PolicyKind[Any]]:
    """``kinds`` in an order where each runs after the kinds it names in ``after``;
    otherwise as listed (so the order is stable and a registration line's place breaks ties)."""
    by_name = {k.name: k for k in kinds}
    if len(by_name) != len(kinds):
        raise PolicyKindError("a policy kind is registered twice")
    for k in kinds:
        for name in k.after:
            if name not in by_name:
                raise PolicyKindError(f"{k.name} runs after {name}, which is not a registered policy kind")
    done: list[PolicyKind[Any]] = []
    placed: set[str] = set()
    while len(done) < len(kinds):
        ready = next((k for k in kinds if k.name not in placed and placed.issuperset(k.after)), None)
        if ready is None:
            left = sorted(k.name for k in kinds if k.name not in placed)
            raise PolicyKindError(f"policy kinds {', '.join(left)} wait for each other ('after' makes a cycle)")
        done.append(ready)
        placed.add(ready.name)
    return done
