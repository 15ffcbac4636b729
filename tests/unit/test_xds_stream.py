"""The ADS state machine, driven with plain function calls (no sockets)."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2

from meshline.xds.snapshot import CLUSTER, ENDPOINT, Snapshot, pack
from meshline.xds.stream import Ack, AdsStream, Nack


def snap(cluster_timeout_ms: int = 1000, endpoints: int = 1) -> Snapshot:
    c = cluster_pb2.Cluster(name="orders")
    c.connect_timeout.FromMilliseconds(cluster_timeout_ms)
    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name="orders")
    for _ in range(endpoints):
        cla.endpoints.add().lb_endpoints.add()
    return Snapshot.build({CLUSTER: [pack("orders", c)], ENDPOINT: [pack("orders", cla)]})


def req(type_url: str, version: str = "", nonce: str = "", names: tuple[str, ...] = (), error: str = "",
        node: str = "") -> discovery_pb2.DiscoveryRequest:
    r = discovery_pb2.DiscoveryRequest(type_url=type_url, version_info=version, response_nonce=nonce,
                                       resource_names=list(names))
    if node:
        r.node.id = node
    if error:
        r.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
    return r


def test_initial_request_is_answered_once_a_snapshot_exists() -> None:
    s = AdsStream()
    assert s.receive(req(CLUSTER, node="default.web-1")).responses == []
    assert s.node_id == "default.web-1"
    out = s.update(snap())
    assert [r.type_url for r in out.responses] == [CLUSTER]
    assert out.responses[0].version_info == snap().version(CLUSTER)
    assert len(out.responses[0].resources) == 1


def test_ack_records_version_and_waits() -> None:
    s = AdsStream()
    s.update(snap())
    resp = s.receive(req(CLUSTER)).responses[0]
    out = s.receive(req(CLUSTER, resp.version_info, resp.nonce))
    assert out.responses == []
    assert out.events == [Ack(CLUSTER, resp.version_info)]
    # a changed snapshot is sent to the waiting request
    out = s.update(snap(cluster_timeout_ms=2000))
    assert [r.type_url for r in out.responses] == [CLUSTER]
    assert out.responses[0].nonce != resp.nonce


def test_no_push_while_a_response_is_unacknowledged() -> None:
    s = AdsStream()
    s.update(snap())
    first = s.receive(req(CLUSTER)).responses[0]
    assert s.update(snap(cluster_timeout_ms=3000)).responses == []
    # the ACK of the first response releases the newer version
    out = s.receive(req(CLUSTER, first.version_info, first.nonce))
    assert [r.version_info for r in out.responses] == [snap(cluster_timeout_ms=3000).version(CLUSTER)]


def test_stale_nonce_is_ignored() -> None:
    s = AdsStream()
    s.update(snap())
    first = s.receive(req(CLUSTER)).responses[0]
    s.receive(req(CLUSTER, first.version_info, first.nonce))
    s.update(snap(cluster_timeout_ms=2000))
    out = s.receive(req(CLUSTER, first.version_info, first.nonce))  # answers an old response
    assert out.responses == [] and out.events == []


def test_nack_is_reported_and_the_rejected_version_not_resent() -> None:
    s = AdsStream()
    s.update(snap())
    resp = s.receive(req(CLUSTER)).responses[0]
    out = s.receive(req(CLUSTER, "", resp.nonce, error="bad cluster"))
    assert out.events == [Nack(CLUSTER, resp.version_info, "bad cluster")]
    assert out.responses == []
    # a fixed config goes out
    out = s.update(snap(cluster_timeout_ms=5000))
    assert len(out.responses) == 1


def test_endpoints_are_sent_by_name_and_again_when_names_change() -> None:
    s = AdsStream()
    s.update(snap())
    out = s.receive(req(ENDPOINT, names=("orders",)))
    assert len(out.responses[0].resources) == 1
    r = out.responses[0]
    out = s.receive(req(ENDPOINT, r.version_info, r.nonce, names=("orders", "inventory")))
    assert len(out.responses) == 1  # names changed: answer even though the version did not


def test_warming_trap_eds_is_resent_after_a_cluster_change() -> None:
    """Envoy re-asks EDS with the same version and nonce after a CDS change; it must get an answer."""
    s = AdsStream()
    s.update(snap())
    c = s.receive(req(CLUSTER)).responses[0]
    e = s.receive(req(ENDPOINT, names=("orders",))).responses[0]
    s.receive(req(CLUSTER, c.version_info, c.nonce))
    s.receive(req(ENDPOINT, e.version_info, e.nonce, names=("orders",)))
    out = s.update(snap(cluster_timeout_ms=9000))  # cluster changes, endpoints do not
    assert [r.type_url for r in out.responses] == [CLUSTER]
    c2 = out.responses[0]
    s.receive(req(CLUSTER, c2.version_info, c2.nonce))
    out = s.receive(req(ENDPOINT, e.version_info, e.nonce, names=("orders",)))  # looks like an ACK
    assert [r.type_url for r in out.responses] == [ENDPOINT]
    assert out.responses[0].version_info == e.version_info


def test_by_name_types_are_resent_only_when_a_subscribed_resource_changes() -> None:
    """A new ClusterLoadAssignment Envoy has not asked for yet does not resend the ones it has;
    a change to one it asked for does."""
    def with_extra(extra: int, orders_endpoints: int = 1) -> Snapshot:
        base = snap(endpoints=orders_endpoints)
        extras = [pack(f"new-{i}", endpoint_pb2.ClusterLoadAssignment(cluster_name=f"new-{i}")) for i in range(extra)]
        return Snapshot.build({CLUSTER: list(base.slot(CLUSTER).resources.values()),
                               ENDPOINT: [*base.slot(ENDPOINT).resources.values(), *extras]})  # fmt: skip

    s = AdsStream()
    s.update(with_extra(0))
    e = s.receive(req(ENDPOINT, names=("orders",))).responses[0]
    s.receive(req(ENDPOINT, e.version_info, e.nonce, names=("orders",)))
    assert s.update(with_extra(1)).responses == []  # type version changed, "orders" did not
    out = s.update(with_extra(1, orders_endpoints=2))
    assert [r.type_url for r in out.responses] == [ENDPOINT]
    assert len(out.responses[0].resources) == 1
    r = out.responses[0]
    out = s.receive(req(ENDPOINT, r.version_info, r.nonce, names=("orders", "new-0")))  # now it asks for it
    assert [len(x.resources) for x in out.responses] == [2]
