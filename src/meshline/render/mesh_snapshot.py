"""The immutable input of rendering: one mesh's resources at one store revision.

Pieces of rendering shared by many dataplanes are memoized per snapshot
(:meth:`MeshSnapshot.memoize`). Pieces memoized with a ``carry`` (what render.py does for
whole inbound and outbound sections) may also survive into the next snapshot, built with
``previous=``, when nothing they depend on changed. What they depend on:

* the Mesh resource (any change: nothing survives);
* the endpoints and the protocol of every service they read, recorded while they were
  made (``endpoints`` and ``protocols`` track reads; reading ``dataplanes`` inside a memoized
  piece makes it never survive);
* the policies that select their destination service: a policy only shapes sections whose
  destination service its ``destinations`` select (plugins match with the section's service,
  or an inbound's tags, as destination). A changed policy whose destinations name no exact
  service (``*``, or tags only) may select anything: nothing survives;
* their owner: a piece of one dataplane survives only while that dataplane is unchanged.

:meth:`MeshSnapshot.changes` reports the same differences, so the reconciler re-renders
only the dataplanes a change can reach. tests/golden/test_incremental_render.py checks that
rendering incrementally gives exactly what rendering from scratch gives.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from meshline.core.dataplane import DEFAULT_PROTOCOL, DataplaneSpec, Inbound, service_protocol
from meshline.core.external_service import ExternalServiceSpec
from meshline.core.mesh import MeshSpec
from meshline.core.resource import Resource
from meshline.core.selectors import ANY, SelectorSpec

T = TypeVar("T")
V = TypeVar("V")
ANY_SERVICE = "*"  # in read sets and change sets: every service
NOT_CARRIED = "!"  # in read sets: the piece read something untracked and must not be carried
# More carried pieces than this many per dataplane: stop carrying (re-render once) so
# pieces of departed dataplanes and outbounds cannot accumulate.
MAX_CARRIED_PER_DATAPLANE = 16


@dataclass(frozen=True)
class Carry:
    """How a memoized piece may survive into the next snapshot (see the module docstring)."""

    services: frozenset[str]  # destination services it is for (policies selecting them matter)
    owner: tuple[str, int] | None = None  # (dataplane, version) it belongs to


@dataclass(frozen=True)
class _Memo:
    value: Any
    reads: frozenset[str]  # services whose endpoints it read (NOT_CARRIED: never carry it)
    carry: Carry | None


class _Reads:
    """The read sets of the memoized pieces being made (nested: a read counts for each)."""

    def __init__(self) -> None:
        self.stack: list[set[str]] = []

    def add(self, items: Iterator[str] | frozenset[str] | tuple[str, ...]) -> None:
        if self.stack:
            values = tuple(items)
            for reads in self.stack:
                reads.update(values)


class TrackedMapping(Mapping[str, V]):
    """A read-only mapping that reports which keys memoized pieces read (iteration: all of them).

    With ``whole``, any read reports ``everything`` (for the dataplanes: a piece that looks
    at other dataplanes is never carried).
    """

    def __init__(self, data: dict[str, V], reads: _Reads, everything: str = ANY_SERVICE, whole: bool = False) -> None:
        self._data = data
        self._reads = reads
        self._everything = everything
        self._whole = whole

    def __getitem__(self, key: str) -> V:
        self._reads.add((self._everything if self._whole else key,))
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        self._reads.add((self._everything,))
        return iter(self._data)

    def __len__(self) -> int:
        self._reads.add((self._everything,))
        return len(self._data)

    def raw(self) -> dict[str, V]:
        """The data, without recording a read (for the reconciler and for diffs)."""
        return self._data


def destination_services(policy: Resource) -> frozenset[str] | None:
    """The services a policy's destinations select; None when they may select any service."""
    spec = policy.spec
    if not isinstance(spec, SelectorSpec):
        return None
    out = set()
    for selector in spec.destinations:
        service = selector.match.get("service", ANY)
        if service == ANY:
            return None
        out.add(service)
    return frozenset(out)


@dataclass(frozen=True)
class Changes:
    """What differs between two snapshots of one mesh, for choosing what to re-render."""

    everything: bool  # the Mesh, or a policy that may select any service, changed
    dataplanes: frozenset[str]  # added, removed or changed
    services: frozenset[str]  # whose endpoints or protocol changed
    policy_services: frozenset[str]  # destination services of changed policies


@dataclass(frozen=True)
class Endpoint:
    dataplane: str
    address: str
    port: int
    tags: Mapping[str, str]
    healthy: bool = True

    @property
    def zone(self) -> str:
        return self.tags.get("zone", "")


WATCH_ALL = "*"  # MeshSnapshot.watched: a tap of every service


def _with_callees(watched: frozenset[str], dataplanes: Iterable[Resource]) -> frozenset[str]:
    """The tapped services and those they call: a tap shows a service's calls out, and both
    halves of each (the callee's explains a failure)."""
    if not watched or WATCH_ALL in watched:
        return watched
    out = set(watched)
    for dp in dataplanes:
        spec = dp.spec
        if isinstance(spec, DataplaneSpec) and any(i.service in watched for i in spec.inbound):
            out |= {o.service for o in spec.outbound}
    return frozenset(out)


@dataclass(frozen=True)
class MeshSnapshot:
    mesh: Resource
    revision: int
    dataplanes: Mapping[str, Resource]
    policies: Mapping[str, tuple[Resource, ...]]  # kind -> resources sorted by name
    # Dataplanes whose sidecar is known to be gone (see controlplane.health).
    offline: frozenset[str] = frozenset()
    endpoints: Mapping[str, tuple[Endpoint, ...]] = field(default_factory=dict)
    # service -> protocol, for every service with instances or an outbound to it (see
    # service_protocol); built from the resources and ``known_protocols``.
    protocols: Mapping[str, str] = field(default_factory=dict)
    # Memo for pieces shared by many dataplanes at this revision (render is pure, so
    # anything computed from the snapshot alone may be reused).
    memo: dict[Any, _Memo] = field(default_factory=dict, compare=False, repr=False)
    reads: _Reads = field(default_factory=_Reads, compare=False, repr=False)
    # What changed since the snapshot this one was built from (``previous=``; None: no previous).
    since_previous: Changes | None = field(default=None, compare=False, repr=False)
    # Services a live tap watches (telemetry): their sidecars stream every request's entry.
    # WATCH_ALL: a tap of the whole mesh. Not from the store: the taps of this replica.
    watched: frozenset[str] = frozenset()

    @classmethod
    def build(
        cls,
        mesh: Resource,
        resources: list[Resource],
        revision: int,
        offline: frozenset[str] = frozenset(),
        previous: MeshSnapshot | None = None,
        known_protocols: Mapping[str, str] | None = None,
        watched: frozenset[str] = frozenset(),
    ) -> MeshSnapshot:
        """The snapshot of ``resources``; with ``previous`` (the same mesh's last snapshot),
        the carried pieces of its memo that nothing changed under are kept.
        ``known_protocols``: service -> the protocol its instances said when it last had some
        (kept by the reconciler), for services that have none now."""
        dataplanes: dict[str, Resource] = {}
        policies: dict[str, list[Resource]] = defaultdict(list)
        endpoints: dict[str, list[Endpoint]] = defaultdict(list)
        for r in resources:
            if r.kind == "Dataplane":
                dataplanes[r.name] = r
                spec = r.spec
                assert isinstance(spec, DataplaneSpec)
                # Only sidecars serve a service: a gateway's or zone proxy's inbounds are its
                # own listeners, not instances callers may be sent to.
                for inbound in spec.inbound if spec.proxy == "sidecar" else ():
                    endpoints[inbound.service].append(
                        Endpoint(r.name, spec.address, inbound.port, inbound.tags,
                                 spec.ready and r.name not in offline)
                    )
            elif r.kind != "Mesh":
                policies[r.kind].append(r)
        protocols = _protocols(endpoints, dataplanes.values(), known_protocols or {})
        for r in policies.get("ExternalService", ()):  # what the app speaks to its sidecar for it
            if isinstance(r.spec, ExternalServiceSpec):
                protocols[r.name] = r.spec.mesh_protocol
        reads = _Reads()
        snap = cls(
            mesh=mesh,
            revision=revision,
            dataplanes=TrackedMapping(dataplanes, reads, everything=NOT_CARRIED, whole=True),
            policies={k: tuple(sorted(v, key=lambda r: r.name)) for k, v in policies.items()},
            offline=offline,
            endpoints=TrackedMapping(
                {k: tuple(sorted(v, key=lambda e: (e.dataplane, e.port))) for k, v in endpoints.items()}, reads
            ),
            protocols=TrackedMapping(protocols, reads),
            reads=reads,
            watched=_with_callees(watched, dataplanes.values()),
        )
        if previous is not None:
            changes = snap.changes(previous)
            object.__setattr__(snap, "since_previous", changes)
            snap._carry_from(previous, changes)
        return snap

    # -- differences between snapshots -------------------------------------------------
    def changes(self, previous: MeshSnapshot | None) -> Changes:
        """What changed since ``previous`` (None: everything)."""
        if previous is None or previous.mesh != self.mesh:
            return Changes(True, frozenset(self._dataplanes()), frozenset(), frozenset())
        before, after = previous._dataplanes(), self._dataplanes()
        dataplanes = {
            name for name in before.keys() | after.keys()
            if (b := before.get(name)) is None or (a := after.get(name)) is None or b.version != a.version
        }  # fmt: skip
        old_eps, new_eps = previous._endpoints(), self._endpoints()
        services = {s for s in old_eps.keys() | new_eps.keys() if old_eps.get(s) != new_eps.get(s)}
        old_p, new_p = previous._protocols(), self._protocols()
        services |= {s for s in old_p.keys() | new_p.keys() if old_p.get(s) != new_p.get(s)}
        everything = False
        policy_services: set[str] = set()
        for kind in previous.policies.keys() | self.policies.keys():
            old = {p.name: p for p in previous.policies.get(kind, ())}
            new = {p.name: p for p in self.policies.get(kind, ())}
            for name in old.keys() | new.keys():
                o, n = old.get(name), new.get(name)
                if o is not None and n is not None and o.version == n.version:
                    continue
                for policy in (o, n):
                    if policy is None:
                        continue
                    selected = destination_services(policy)
                    if selected is None:
                        everything = True
                    else:
                        policy_services |= selected
        flipped = previous.watched ^ self.watched
        if WATCH_ALL in flipped:
            everything = True
        else:  # their inbounds and every outbound to them (watched holds what they call too)
            policy_services |= flipped
        return Changes(everything, frozenset(dataplanes), frozenset(services), frozenset(policy_services))

    def _dataplanes(self) -> Mapping[str, Resource]:
        d = self.dataplanes
        return d.raw() if isinstance(d, TrackedMapping) else d

    def _endpoints(self) -> Mapping[str, tuple[Endpoint, ...]]:
        e = self.endpoints
        return e.raw() if isinstance(e, TrackedMapping) else e

    def _protocols(self) -> Mapping[str, str]:
        p = self.protocols
        return p.raw() if isinstance(p, TrackedMapping) else p

    def instance_protocols(self) -> dict[str, str]:
        """service -> protocol, for the services that have instances (what the reconciler remembers)."""
        eps = self._endpoints()
        return {s: p for s, p in self._protocols().items() if eps.get(s)}

    def _carry_from(self, previous: MeshSnapshot, changes: Changes) -> None:
        if changes.everything or len(previous.memo) > MAX_CARRIED_PER_DATAPLANE * max(1, len(self._dataplanes())):
            return
        dataplanes = self._dataplanes()
        changed = changes.services
        for key, entry in previous.memo.items():
            carry = entry.carry
            if carry is None or NOT_CARRIED in entry.reads or not carry.services.isdisjoint(changes.policy_services):
                continue
            if changed and (ANY_SERVICE in entry.reads or not entry.reads.isdisjoint(changed)):
                continue
            if carry.owner is not None:
                owner = dataplanes.get(carry.owner[0])
                if owner is None or owner.version != carry.owner[1]:
                    continue
            self.memo[key] = entry

    @property
    def spec(self) -> MeshSpec:
        assert isinstance(self.mesh.spec, MeshSpec)
        return self.mesh.spec

    @property
    def name(self) -> str:
        return self.mesh.name

    def of_kind(self, kind: str) -> tuple[Resource, ...]:
        return self.policies.get(kind, ())

    def service_protocol(self, service: str) -> str:
        """The protocol every instance of ``service`` declares (tcp if they disagree); with no
        instance, the one its instances last said, else the one the outbounds to it declare."""
        return self.protocols.get(service, DEFAULT_PROTOCOL)

    def services(self) -> list[str]:
        return sorted(self.endpoints)

    def identity(self, service: str) -> str:
        return f"spiffe://{self.spec.trust_domain}/{self.name}/{service}"

    def identity_prefix(self) -> str:
        return f"spiffe://{self.spec.trust_domain}/{self.name}/"

    def memoize(self, key: Any, make: Callable[[], T], carry: Carry | None = None) -> T:
        """``make()`` once per snapshot (and, with ``carry``, across snapshots while its inputs hold)."""
        entry = self.memo.get(key)
        if entry is None:
            reads: set[str] = set()
            self.reads.stack.append(reads)
            try:
                value = make()
            finally:
                self.reads.stack.pop()
            entry = self.memo[key] = _Memo(value, frozenset(reads), carry)
            self.reads.add(entry.reads)  # the enclosing pieces read it all too
        else:
            self.reads.add(entry.reads)
        return entry.value  # type: ignore[no-any-return,unused-ignore]

    def recording(self) -> _Recording:
        """``with mesh.recording() as reads:`` collects the services read inside (for the reconciler)."""
        return _Recording(self.reads)


def _protocols(
    endpoints: Mapping[str, list[Endpoint]], dataplanes: Iterable[Resource], known: Mapping[str, str]
) -> dict[str, str]:
    """service -> protocol: what all its instances say (tcp if they disagree); for a service
    without instances, what they last said (``known``), else what every outbound to it
    declares. Rendering such a service as tcp would give an HTTP caller an empty reply instead
    of a 503 it can read, and no HTTP timeouts or retries."""
    out: dict[str, str] = {}
    for service, eps in endpoints.items():
        out[service] = service_protocol(e.tags.get("protocol", DEFAULT_PROTOCOL) for e in eps)
    for service, protocol in known.items():
        out.setdefault(service, protocol)
    declared: dict[str, set[str]] = defaultdict(set)
    for dp in dataplanes:
        spec = dp.spec
        assert isinstance(spec, DataplaneSpec)
        for o in spec.outbound:
            if o.service not in out:
                declared[o.service].add(o.protocol or "")
    for service, said in declared.items():
        if len(said) == 1 and "" not in said:  # every outbound to it declares the same
            out[service] = said.pop()
    return out


def inbound_of(dataplane: Resource, port: int) -> Inbound:
    spec = dataplane.spec
    assert isinstance(spec, DataplaneSpec)
    return next(i for i in spec.inbound if i.port == port)


class _Recording:
    def __init__(self, reads: _Reads) -> None:
        self._reads = reads
        self.services: set[str] = set()

    def __enter__(self) -> set[str]:
        self._reads.stack.append(self.services)
        return self.services

    def __exit__(self, *exc: object) -> None:
        self._reads.stack.remove(self.services)
