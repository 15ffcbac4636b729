"""Has every caller of an instance ACKed a configuration without it? The question a stopping
agent asks (``GET /api/v1/meshes/{mesh}/dataplanes/{name}/removal``) between deregistering and
draining Envoy: until its callers' sidecars run configs that no longer list it, they still send
it new requests, and a drain that started earlier would refuse them.

"Without it" is read from the rendered endpoints themselves (no revision bookkeeping, so it
holds across replicas: versions are content hashes, and ACKs are shared status)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from envoy.config.endpoint.v3 import endpoint_pb2

from meshline.render.render import RenderResult
from meshline.xds.snapshot import ENDPOINT, Snapshot

# A config that read these reads every service's endpoints (see RenderResult.reads).
_READS_ALL = frozenset({"*", "!"})


@dataclass(frozen=True)
class Peer:
    """One other dataplane of the mesh: its last render here and its shared status."""

    name: str
    result: RenderResult | None
    status: dict[str, Any]


def lists_endpoint(snapshot: Snapshot, address: str, port: int) -> bool:
    """Whether any ClusterLoadAssignment of ``snapshot`` still sends to ``address:port``."""
    for packed in snapshot.slot(ENDPOINT).resources.values():
        cla = endpoint_pb2.ClusterLoadAssignment()
        packed.any.Unpack(cla)
        for locality in cla.endpoints:
            for lb in locality.lb_endpoints:
                sock = lb.endpoint.address.socket_address
                if sock.address == address and sock.port_value == port:
                    return True
    return False


def _pending(peer: Peer, service: str, address: str, port: int) -> str | None:
    """Why ``peer`` may still send this instance requests (None: it cannot)."""
    result = peer.result
    if result is None:
        return None  # nothing rendered for it here: no config that could list the instance
    if service not in result.reads and not (result.reads & _READS_ALL):
        return None  # not a caller: its config reads no endpoint of the service (decode nothing)
    if lists_endpoint(result.snapshot, address, port):
        return "its configuration still lists this instance (not rendered again yet)"
    state = peer.status.get("state")
    if state == "offline":
        return None  # not connected: nothing to wait for; reported in "offline"
    acked: dict[str, str] = {t: v.get("acked") for t, v in peer.status.get("types", {}).items()}
    versions = result.snapshot.versions_to_ack()
    behind = [t for t in ("CDS", "EDS") if t in versions and acked.get(t) != versions[t]]
    if behind:
        return "has not ACKed " + ", ".join(behind) + " without this instance yet"
    return None


def removal_report(peers: Iterable[Peer], me: str, service: str, address: str, port: int) -> dict[str, Any]:
    """``{"done": bool, "pending": {name: why}, "offline": [names]}`` for the instance
    ``address:port`` of dataplane ``me`` (service ``service``)."""
    pending: dict[str, str] = {}
    offline: list[str] = []
    for peer in peers:
        if peer.name == me:
            continue
        why = _pending(peer, service, address, port)
        if why is not None:
            pending[peer.name] = why
        elif peer.result is not None and peer.status.get("state") == "offline" and (
            service in peer.result.reads or peer.result.reads & _READS_ALL
        ):
            offline.append(peer.name)
    return {"done": not pending, "pending": pending, "offline": sorted(offline)}
