"""LoadBalancer: how a caller picks an instance, and locality (zone) awareness.

    kind: LoadBalancer
    mesh: default
    name: orders-sticky
    spec:
      destinations: [{match: {service: orders}}]
      conf:
        type: RingHash                 # RoundRobin | LeastRequest | Random | RingHash | Maglev
        ringHash: {minRingSize: 1024, maxRingSize: 8388608, hashFunction: XXHash}
        hashPolicies:
          - header: x-user-id
          - cookie: {name: session, ttl: 1h}
          - sourceIP: true
          - queryParameter: user
        localityAwareness:
          failoverOrder: [zone-b]      # zones to try after the caller's own, in order
          overprovisioningFactor: 140

Locality awareness is on whenever a LoadBalancer policy applies (``disabled: true`` turns it
off): instances in the caller's ``zone`` get priority 0, the zones in ``failoverOrder`` the
next priorities, every other zone the last one. Envoy sends everything to priority 0 while
at least 100/1.4 = 72% of it is healthy and spills the rest to the next priority below that.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from meshline.core.errors import FieldProblem
from meshline.core.resource import KindInfo, Resource, spec_as
from meshline.core.schema import Duration, Spec
from meshline.core.selectors import SelectorSpec
from meshline.policies.common.fields import Percent, PositiveInt, service_only_destinations

LbType = Literal["RoundRobin", "LeastRequest", "Random", "RingHash", "Maglev"]
HASHING_TYPES = ("RingHash", "Maglev")
MAX_RING_SIZE = 8_388_608  # Envoy's upper bound
MAX_MAGLEV_TABLE = 5_000_011
DEFAULT_OVERPROVISIONING = 140  # Envoy's default: priority 0 keeps all traffic while >= 72% healthy


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    return all(n % d for d in range(2, int(n**0.5) + 1))


class LeastRequest(Spec):
    choice_count: int = Field(default=2, ge=2)  # instances sampled; the least busy one wins


class RingHash(Spec):
    min_ring_size: PositiveInt = 1024
    max_ring_size: PositiveInt = MAX_RING_SIZE
    hash_function: Literal["XXHash", "MurmurHash2"] = "XXHash"

    @field_validator("min_ring_size", "max_ring_size")
    @classmethod
    def _size(cls, v: int) -> int:
        if v > MAX_RING_SIZE:
            raise ValueError(f"must be at most {MAX_RING_SIZE}")
        return v


class Maglev(Spec):
    table_size: int = 65537

    @field_validator("table_size")
    @classmethod
    def _prime(cls, v: int) -> int:
        if not _is_prime(v) or v > MAX_MAGLEV_TABLE:
            raise ValueError(f"must be a prime number up to {MAX_MAGLEV_TABLE} (e.g. 65537 or 5000011)")
        return v


class CookieHash(Spec):
    name: str
    ttl: Duration | None = None  # set: Envoy issues the cookie when the request has none
    path: str | None = None


class HashPolicy(Spec):
    """Exactly one of header, cookie, sourceIP, queryParameter; ``terminal`` stops at the first that hashes."""

    header: str | None = None
    cookie: CookieHash | None = None
    source_ip: bool | None = Field(default=None, alias="sourceIP")
    query_parameter: str | None = None
    terminal: bool = False

    @model_validator(mode="after")
    def _one(self) -> HashPolicy:
        chosen = [v for v in (self.header, self.cookie, self.source_ip, self.query_parameter) if v]
        if len(chosen) != 1:
            raise ValueError(
                "set exactly one of header, cookie, sourceIP: true, queryParameter (e.g. header: x-user-id)"
            )
        return self

    @property
    def l7(self) -> bool:
        return not self.source_ip


class LocalityAwareness(Spec):
    disabled: bool = False
    failover_order: list[str] = Field(default_factory=list)
    overprovisioning_factor: int = Field(default=DEFAULT_OVERPROVISIONING, ge=100)

    @field_validator("failover_order")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        dupes = sorted({z for z in v if v.count(z) > 1})
        if dupes:
            raise ValueError(f"lists {', '.join(dupes)} more than once; keep each zone once")
        return v


class LoadBalancerConf(Spec):
    type: LbType = "RoundRobin"
    least_request: LeastRequest | None = None
    ring_hash: RingHash | None = None
    maglev: Maglev | None = None
    hash_policies: list[HashPolicy] = Field(default_factory=list)
    locality_awareness: LocalityAwareness = Field(default_factory=LocalityAwareness)
    panic_threshold: Percent | None = None  # Envoy default 50: below it, use every instance


class LoadBalancerSpec(SelectorSpec):
    conf: LoadBalancerConf = Field(default_factory=LoadBalancerConf)


_SETTINGS_FOR = {"leastRequest": "LeastRequest", "ringHash": "RingHash", "maglev": "Maglev"}


def _contradictions(res: Resource) -> list[FieldProblem]:
    spec = spec_as(res, LoadBalancerSpec)
    conf = spec.conf
    problems = []
    for field, lb_type in _SETTINGS_FOR.items():
        if conf.to_json().get(field) is not None and conf.type != lb_type:
            problems.append(
                FieldProblem(
                    f"spec.conf.{field}",
                    f"only applies with type: {lb_type} (type is {conf.type}); set type: {lb_type}"
                    f" or remove {field}",
                )
            )
    if conf.hash_policies and conf.type not in HASHING_TYPES:
        problems.append(
            FieldProblem(
                "spec.conf.hashPolicies",
                f"only apply with type: RingHash or Maglev (type is {conf.type}); set one of them"
                " or remove hashPolicies",
            )
        )
    if conf.type in HASHING_TYPES and not conf.hash_policies:
        problems.append(
            FieldProblem(
                "spec.conf.hashPolicies",
                f"is required with type: {conf.type}: without a hash every request lands at random;"
                " add e.g. [{header: x-user-id}]",
            )
        )
    ring = conf.ring_hash
    if ring is not None and ring.min_ring_size > ring.max_ring_size:
        problems.append(
            FieldProblem(
                "spec.conf.ringHash.minRingSize",
                f"{ring.min_ring_size} is larger than maxRingSize {ring.max_ring_size}; lower it",
            )
        )
    return problems


def _type_column(r: Resource) -> str:
    spec = spec_as(r, LoadBalancerSpec)
    return spec.conf.type


def _locality_column(r: Resource) -> str:
    spec = spec_as(r, LoadBalancerSpec)
    return "off" if spec.conf.locality_awareness.disabled else "on"


KIND = KindInfo(
    kind="LoadBalancer",
    plural="loadbalancers",
    spec=LoadBalancerSpec,
    summary="Load-balancing algorithm, hash policies for sticky sessions, locality-aware failover",
    is_policy=True,
    aliases=("load-balancer", "load-balancers", "lb"),
    validators=(service_only_destinations, _contradictions),
    columns={"TYPE": _type_column, "LOCALITY": _locality_column},
)
