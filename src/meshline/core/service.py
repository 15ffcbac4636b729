"""Service: one per service of a mesh, holding its virtual IP (VIP).

The control plane creates one for every service a Dataplane declares
(``controlplane/vips.py``), with an address from the mesh's ``transparentProxy.vipRange``,
and never changes it afterwards: a transparent workload resolves ``orders.mesh`` to it, on
every host, across control-plane restarts and replicas (it is in the store). A user may
create one first to pin a service's VIP.

Allocation is a pure function (:func:`allocate`): the first free address of a probe
sequence that depends only on the service's name, so two replicas allocating the same
service pick the same address, and a lost race changes nothing.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Mapping

from pydantic import field_validator

from meshline.core.resource import KindInfo, Resource
from meshline.core.schema import Spec

MESH_DOMAIN = "mesh"  # orders.mesh


class ServiceSpec(Spec):
    vip: str

    @field_validator("vip")
    @classmethod
    def _vip(cls, v: str) -> str:
        try:
            return str(ipaddress.IPv4Address(v))
        except ValueError:
            raise ValueError(f"'{v}' is not an IPv4 address; use one in the mesh's transparentProxy.vipRange") from None


class RangeFull(Exception):
    """Every address of the VIP range is taken."""


def _usable(net: ipaddress.IPv4Network) -> int:
    return max(1, net.num_addresses - 2)  # neither the network nor the broadcast address


def candidate(service: str, net: ipaddress.IPv4Network, attempt: int) -> str:
    """The ``attempt``-th address tried for ``service`` (a name-seeded probe sequence)."""
    seed = int.from_bytes(hashlib.sha256(service.encode()).digest()[:8], "big")
    size = _usable(net)
    return str(net.network_address + 1 + (seed + attempt) % size)


def allocate(service: str, cidr: str, taken: Iterable[str]) -> str:
    """The VIP for a new ``service`` in ``cidr``, avoiding ``taken``."""
    net = ipaddress.IPv4Network(cidr)
    used = set(taken)
    for attempt in range(_usable(net)):
        address = candidate(service, net, attempt)
        if address not in used:
            return address
    raise RangeFull(f"the VIP range {cidr} is full; give the mesh a larger transparentProxy.vipRange")


def vip_table(services: Iterable[Resource]) -> dict[str, str]:
    """service -> VIP, one address per service: when two claim one address (two replicas
    raced), the older record keeps it until the allocator moves the other."""
    out: dict[str, str] = {}
    owner: dict[str, tuple[float, str]] = {}
    for r in sorted(services, key=lambda r: (r.created_at or 0.0, r.name)):
        spec = r.spec
        assert isinstance(spec, ServiceSpec)
        if spec.vip in owner:
            continue
        owner[spec.vip] = (r.created_at or 0.0, r.name)
        out[r.name] = spec.vip
    return out


def duplicates(services: Iterable[Resource]) -> list[str]:
    """Services whose VIP an older record holds (to be allocated again)."""
    items = list(services)
    table = vip_table(items)
    return sorted(r.name for r in items if r.name not in table)


def in_range(vips: Mapping[str, str], cidr: str) -> dict[str, str]:
    net = ipaddress.IPv4Network(cidr)
    return {s: v for s, v in vips.items() if ipaddress.IPv4Address(v) in net}


def _vip_column(r: Resource) -> str:
    assert isinstance(r.spec, ServiceSpec)
    return r.spec.vip


def _dns_column(r: Resource) -> str:
    return f"{r.name}.{MESH_DOMAIN}"


KIND = KindInfo(
    kind="Service",
    plural="services",
    spec=ServiceSpec,
    summary="A service of the mesh and its virtual IP (made by the control plane; create one to pin a VIP)",
    aliases=("service", "svc", "svcs"),
    columns={"VIP": _vip_column, "DNS": _dns_column},
)
