"""The kinds multi-zone adds: what a zone says it serves, and what global knows of each zone.

* ``ZoneService`` (mesh-scoped): one service of one zone as that zone's control plane reports
  it: healthy instance count per tag set, protocol, and the address of the zone's ingress.
  A zone writes its own into its store, sends them to global, and global sends every other
  zone's to each zone; zone control planes render a remote service as endpoints at the remote
  zone's ingress (``render.mesh_snapshot``). A remote zone's individual endpoints never travel.
* ``Zone`` (global, internal): global's record of one zone: the last zone store revision of
  that zone's inventory it holds (where the zone resumes its upload).

Both are written by control planes only; an apply of either is refused.
"""

from __future__ import annotations

import hashlib

from pydantic import Field

from meshline.core.resource import KindInfo, Resource
from meshline.core.schema import Spec

ZONE_SERVICE = "ZoneService"
ZONE = "Zone"


class IngressAddress(Spec):
    address: str
    port: int = Field(ge=1, le=65535)


class TaggedInstances(Spec):
    tags: dict[str, str]
    instances: int = Field(ge=0)  # healthy (ready, connected) instances with exactly these tags


class ZoneServiceSpec(Spec):
    zone: str
    service: str
    protocol: str = "tcp"
    instances: list[TaggedInstances] = Field(default_factory=list)
    ingress: IngressAddress | None = None  # None: the zone has no ingress; not reachable from others

    def healthy(self) -> int:
        return sum(i.instances for i in self.instances)


class ZoneSpec(Spec):
    inventory_revision: int = 0  # the zone's store revision its stored inventory is as of


def zone_service_name(zone: str, service: str) -> str:
    """A resource name for (zone, service): names allow 63 characters of [a-z0-9-], and
    joining the two could collide ("a-b"+"c" and "a"+"b-c"), so a hash; the spec says both."""
    digest = hashlib.sha256(f"{zone}/{service}".encode()).hexdigest()[:20]
    return f"zs-{digest}"


def _zone(r: Resource) -> str:
    assert isinstance(r.spec, ZoneServiceSpec)
    return r.spec.zone


def _service(r: Resource) -> str:
    assert isinstance(r.spec, ZoneServiceSpec)
    return r.spec.service


def _healthy(r: Resource) -> str:
    assert isinstance(r.spec, ZoneServiceSpec)
    return str(r.spec.healthy())


def _ingress(r: Resource) -> str:
    assert isinstance(r.spec, ZoneServiceSpec)
    i = r.spec.ingress
    return f"{i.address}:{i.port}" if i else "-"


ZONE_SERVICE_KIND = KindInfo(
    kind=ZONE_SERVICE,
    plural="zoneservices",
    spec=ZoneServiceSpec,
    summary="A service of one zone as its control plane reports it (written by control planes)",
    columns={"ZONE": _zone, "SERVICE": _service, "INSTANCES": _healthy, "INGRESS": _ingress},
)
ZONE_KIND = KindInfo(
    kind=ZONE,
    plural="zonerecords",
    spec=ZoneSpec,
    summary="(internal) global's record of a zone: how far its inventory is synced",
    mesh_scoped=False,
    internal=True,
)
KINDS = (ZONE_SERVICE_KIND, ZONE_KIND)
