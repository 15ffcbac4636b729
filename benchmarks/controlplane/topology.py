"""The simulated mesh the control-plane benchmarks run against.

``dataplanes`` workloads spread over ``services`` services (``svc-0`` ... ), one inbound each
(HTTP, version v1 or v2), each reaching:

* ``hub`` (``svc-0``): every dataplane reaches it, so a route change for it goes everywhere;
* two neighbours (``svc-(i+1)``, ``svc-(i+7)``), so a change to one other service reaches
  only a few percent of the mesh;
* ``fresh``: a service no dataplane serves yet. Its outbound renders as plain TCP with no
  endpoints until its first instance registers as HTTP; then every dataplane's listener,
  cluster, endpoints and route change at once (the "new service" case: all four types).

Addresses are distinct 10.x.y.z, as on separate hosts. Everything is plain dicts (the API's
JSON), so the same documents go through the API or straight into the store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MESH = "default"
HUB = "svc-0"
FRESH = "fresh"
INBOUND_PORT = 8080
APP_PORT = 18080
NEIGHBOURS = (1, 7)


@dataclass(frozen=True)
class Topology:
    dataplanes: int
    services: int

    def service_of(self, i: int) -> str:
        return f"svc-{i % self.services}"

    def name_of(self, i: int) -> str:
        return f"dp-{i}"

    def outbound_services(self, i: int) -> list[str]:
        mine = i % self.services
        wanted = [HUB, *(f"svc-{(mine + step) % self.services}" for step in NEIGHBOURS), FRESH]
        out: list[str] = []
        for svc in wanted:
            if svc != self.service_of(i) and svc not in out:
                out.append(svc)
        return out

    def reaching(self, service: str) -> list[int]:
        """Indexes of the dataplanes with an outbound to ``service``."""
        return [i for i in range(self.dataplanes) if service in self.outbound_services(i)]

    def dataplane(self, i: int, *, ready: bool = True, service: str | None = None) -> dict[str, Any]:
        svc = service or self.service_of(i)
        outbound = [
            {"port": 20000 + k, "service": s} for k, s in enumerate(self.outbound_services(i)) if s != svc
        ]
        return {
            "kind": "Dataplane",
            "mesh": MESH,
            "name": self.name_of(i),
            "spec": {
                "address": address(i),
                "inbound": [
                    {"port": INBOUND_PORT, "servicePort": APP_PORT,
                     "tags": {"service": svc, "version": f"v{1 + i % 2}", "protocol": "http"}}
                ],
                "outbound": outbound,
                "ready": ready,
            },
        }  # fmt: skip

    def all_dataplanes(self) -> list[dict[str, Any]]:
        return [self.dataplane(i) for i in range(self.dataplanes)]

    def node_ids(self) -> list[str]:
        return [f"{MESH}.{self.name_of(i)}" for i in range(self.dataplanes)]


def address(i: int) -> str:
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{1 + (i & 255) % 254}"


def fresh_instance(topology: Topology, k: int = 0) -> dict[str, Any]:
    """The first instance of ``fresh``: a new service every dataplane reaches."""
    doc = topology.dataplane(topology.dataplanes + k, service=FRESH)
    doc["name"] = f"fresh-{k}"
    doc["spec"]["outbound"] = []
    return doc


def route_for(service: str, round_no: int) -> dict[str, Any]:
    """An HTTPRoute on ``service``: only its callers' RDS changes (the timeout differs per round)."""
    return {
        "kind": "HTTPRoute",
        "mesh": MESH,
        "name": f"bench-{service}",
        "spec": {
            "destinations": [{"match": {"service": service}}],
            "rules": [
                {"matches": [{"headers": [{"name": "x-bench-round", "exact": str(round_no)}]}],
                 "timeout": f"{1 + round_no % 50}s"},
            ],
        },
    }  # fmt: skip


def mesh_doc() -> dict[str, Any]:
    return {"kind": "Mesh", "name": MESH, "spec": {"mtls": {"mode": "strict"}}}
