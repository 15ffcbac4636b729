"""Service VIPs: allocation is a pure function of the name and what is taken; the allocator
writes one Service per service into the store, keeps it, and two replicas agree."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from meshline.agent.config import default_address
from meshline.controlplane.vips import VipAllocator
from meshline.core.dataplane import DataplaneSpec
from meshline.core.mesh import MeshSpec, TransparentProxySettings
from meshline.core.resource import Resource, ResourceKey
from meshline.core.schema import parse_spec
from meshline.core.service import RangeFull, ServiceSpec, allocate, candidate, vip_table
from meshline.kinds import default_kinds
from meshline.store.factory import open_store


def test_allocation_is_stable_inside_the_range_and_skips_taken_addresses() -> None:
    net = ipaddress.IPv4Network("240.240.0.0/16")
    first = allocate("orders", str(net), [])
    assert first == allocate("orders", str(net), []) and ipaddress.IPv4Address(first) in net
    assert first not in (str(net.network_address), str(net.broadcast_address))
    second = allocate("orders", str(net), [first])
    assert second != first and second == candidate("orders", net, 1)
    assert allocate("web", str(net), []) != first  # (for these names; another name, another seed)
    tiny = "10.99.0.0/30"  # two usable addresses
    a = allocate("a", tiny, [])
    b = allocate("b", tiny, [a])
    assert {a, b} == {"10.99.0.1", "10.99.0.2"}
    with pytest.raises(RangeFull, match="larger transparentProxy.vipRange"):
        allocate("c", tiny, [a, b])


def test_the_vip_range_is_checked() -> None:
    for bad, why in (("240.240.0.1/16", "not an IPv4 network"), ("fd00::/64", "IPv4"), ("127.0.0.0/8", "loopback"),
                     ("10.0.0.0/30", "/8 to /28")):  # fmt: skip
        with pytest.raises(Exception, match=why):
            TransparentProxySettings(vip_range=bad)
    assert MeshSpec().transparent_proxy.vip_range == "240.240.0.0/16"


def test_two_records_on_one_address_go_to_the_older() -> None:
    old = Resource(kind="Service", mesh="m", name="b", spec=ServiceSpec(vip="240.240.0.9"), created_at=1.0)
    new = Resource(kind="Service", mesh="m", name="a", spec=ServiceSpec(vip="240.240.0.9"), created_at=2.0)
    assert vip_table([new, old]) == {"b": "240.240.0.9"}


def _dataplane(name: str, service: str) -> Resource:
    spec = parse_spec(DataplaneSpec, {"address": "10.0.0.1", "inbound": [{"port": 8080, "servicePort": 8081,
                                                                           "tags": {"service": service}}]})  # fmt: skip
    return Resource(kind="Dataplane", mesh="default", name=name, spec=spec)


async def test_every_service_gets_one_stored_vip_that_replicas_agree_on(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    one, two = open_store(url, default_kinds()), open_store(url, default_kinds())
    await one.start()
    await two.start()
    try:
        await one.create(Resource(kind="Mesh", name="default", spec=MeshSpec()))
        await one.create(_dataplane("orders-1", "orders"))
        await one.create(_dataplane("web-1", "web"))
        a, b = VipAllocator(one), VipAllocator(two)
        written = await a.allocate_mesh("default")
        assert sorted(r.name for r in written) == ["orders", "web"]
        assert await b.allocate_mesh("default") == []  # the other replica finds them stored
        orders = await two.get(ResourceKey("Service", "default", "orders"))
        assert isinstance(orders.spec, ServiceSpec)
        assert orders.spec.vip == allocate("orders", "240.240.0.0/16", [])
        # the last instance leaving keeps the VIP: a service that comes back gets the same one
        await one.delete(ResourceKey("Dataplane", "default", "orders-1"))
        assert await a.allocate_mesh("default") == []
        got = await one.get(ResourceKey("Service", "default", "orders"))
        assert got.version == orders.version
    finally:
        await one.close()
        await two.close()


def test_the_default_address_is_loopback_for_a_local_control_plane() -> None:
    assert default_address("http://127.0.0.1:15681") == "127.0.0.1"
    assert default_address("https://localhost:15681") == "127.0.0.1"


def test_a_new_service_gets_its_vip_in_the_write_that_adds_it(tmp_path: Path) -> None:
    import httpx

    from meshline.controlplane.settings import Settings
    from meshline.testing.mesh import ControlPlaneThread
    from meshline.testing.servers import free_port

    cp = ControlPlaneThread(Settings(data_dir=tmp_path, store_url=f"sqlite:///{tmp_path / 'db'}", auth=True,
                                     api_address=f"127.0.0.1:{free_port()}", xds_address=f"127.0.0.1:{free_port()}"))  # fmt: skip
    cp.start()
    try:
        admin = (tmp_path / "admin.token").read_text().strip()
        with httpx.Client(base_url=cp.cp.api_url, headers={"Authorization": f"Bearer {admin}"}, timeout=20) as c:
            base = "/api/v1/meshes/default"
            doc = {"kind": "Dataplane", "mesh": "default", "name": "pay-1", "spec": {"address": "10.0.0.7",
                   "inbound": [{"port": 8080, "servicePort": 8081, "tags": {"service": "pay"}}]}}  # fmt: skip
            before = c.get(f"{base}/sync").json()["revision"]
            assert c.put(f"{base}/dataplanes/pay-1", json=doc).status_code in (200, 201)
            # one transaction: the Dataplane and its Service, and nothing written after it
            assert c.get(f"{base}/sync").json()["revision"] == before + 2
            assert c.get(f"{base}/services/pay").json()["spec"]["vip"] == allocate("pay", "240.240.0.0/16", [])
            applied = {**doc, "name": "ledger-1", "spec": {**doc["spec"], "inbound": [
                {"port": 8080, "servicePort": 8081, "tags": {"service": "ledger"}}]}}  # fmt: skip
            assert c.post("/api/v1/apply", json={"resources": [applied]}).status_code == 200
            assert c.get(f"{base}/services/ledger").status_code == 200
    finally:
        cp.stop()
