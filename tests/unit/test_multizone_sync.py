"""The multi-zone sync: the protocol's batches (incremental, resumable), the CA's sealed
transfer, and real global and zone control planes in one process (HTTP on loopback)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.exceptions import InvalidTag

from meshline.controlplane.settings import Settings
from meshline.core.labels import ORIGIN, ZONE
from meshline.core.mesh import MeshSpec
from meshline.core.resource import Resource, ResourceKey
from meshline.core.zones import ZONE_SERVICE, IngressAddress, ZoneServiceSpec
from meshline.kinds import default_kinds
from meshline.multizone import ca_transfer
from meshline.multizone.protocol import (
    DownFeed,
    LocalEndpoint,
    for_zone,
    inventory,
    merge_report,
    report_delta,
    up_batch,
)
from meshline.policies.timeout.api import TimeoutSpec
from meshline.render.envoy import load_assignment
from meshline.render.mesh_snapshot import MeshSnapshot
from meshline.server.controlplane import ControlPlane
from meshline.server.factory import build_control_plane
from tests.store.test_postgres import admin_url, database_url  # noqa: F401 (fixtures)

KINDS = default_kinds()


def _timeout(name: str, version: int) -> Resource:
    spec = TimeoutSpec.model_validate({"destinations": [{"match": {"service": "orders"}}], "conf": {"connectTimeout": "2s"}})
    return Resource(kind="Timeout", name=name, mesh="default", spec=spec, version=version)


def _zs(zone: str, service: str, version: int, n: int = 1) -> Resource:
    spec = ZoneServiceSpec(zone=zone, service=service, instances=[{"tags": {"version": "v1"}, "instances": n}],  # type: ignore[list-item]
                           ingress=IngressAddress(address="10.0.0.9", port=10001))  # fmt: skip
    return Resource(kind=ZONE_SERVICE, name=f"zs-{zone}-{service}", mesh="default", spec=spec, version=version)


MESH = Resource(kind="Mesh", name="default", spec=MeshSpec(), version=1)


# -- the protocol, without sockets ------------------------------------------------------


def test_a_down_batch_carries_only_what_changed_since_the_zones_revision() -> None:
    feed = DownFeed()
    held = [MESH, _timeout("a", 5), _timeout("b", 9)]
    first = feed.batch(0, 9, held)
    assert [r.name for r in first.put] == ["default", "a", "b"] and first.keys is None  # Mesh first
    later = feed.batch(5, 9, held)
    assert [r.name for r in later.put] == ["b"] and later.delete == []
    assert feed.batch(9, 9, held).empty  # nothing new: a heartbeat


def test_deletions_travel_from_the_log_and_a_zone_resumes_from_its_revision() -> None:
    feed = DownFeed()
    feed.deleted(ResourceKey("Timeout", "default", "b"), 10)
    held = [MESH, _timeout("a", 5), _timeout("c", 11)]
    batch = feed.batch(9, 11, held)
    assert [r.name for r in batch.put] == ["c"]
    assert batch.delete == [ResourceKey("Timeout", "default", "b")]
    assert feed.batch(10, 11, held).delete == []  # the zone already applied that deletion


def test_beyond_the_log_a_zone_gets_the_changes_and_every_key_not_everything() -> None:
    feed = DownFeed(max_tombstones=1)
    feed.deleted(ResourceKey("Timeout", "default", "x"), 3)
    feed.deleted(ResourceKey("Timeout", "default", "y"), 4)  # pushes x out: the log starts after 3
    held = [MESH, _timeout("a", 2), _timeout("c", 6)]
    batch = feed.batch(2, 6, held)
    assert [r.name for r in batch.put] == ["c"]  # still only the change travels
    assert batch.keys is not None and ResourceKey("Timeout", "default", "a") in batch.keys
    # a zone that saw more than global ever wrote (global's store replaced): everything again
    assert len(feed.batch(99, 6, held).put) == 3


def test_a_mesh_whose_ca_changed_is_sent_again() -> None:
    feed = DownFeed()
    assert feed.batch(5, 8, [MESH], versions={MESH.key: 7}).put == [MESH]
    assert feed.batch(7, 8, [MESH], versions={MESH.key: 7}).empty


def test_global_sends_a_zone_policies_and_other_zones_services_never_its_own() -> None:
    assert for_zone(KINDS, _timeout("a", 1), "zone-a")
    assert for_zone(KINDS, _zs("zone-b", "orders", 1), "zone-a")
    assert not for_zone(KINDS, _zs("zone-a", "orders", 1), "zone-a")
    dp = Resource(kind="Dataplane", name="d", mesh="default", spec=KINDS.decode({
        "kind": "Dataplane", "mesh": "default", "name": "d",
        "spec": {"address": "10.0.0.1", "inbound": [{"port": 1, "servicePort": 2, "tags": {"service": "s"}}]}}).spec)  # fmt: skip
    assert not for_zone(KINDS, dp, "zone-a")


def test_an_up_batch_is_incremental_and_a_resync_lists_everything() -> None:
    own = [_zs("zone-a", "orders", 4), _zs("zone-a", "payments", 8)]
    deleted = [(6, ResourceKey(ZONE_SERVICE, "default", "zs-zone-a-gone"))]
    batch = up_batch(5, 8, own, deleted, applied=3, errors=[])
    assert [r.spec.service for r in batch.put] == ["payments"]  # type: ignore[attr-defined]
    assert [k.name for k in batch.delete] == ["zs-zone-a-gone"]
    full = up_batch(5, 8, own, deleted, applied=3, errors=[], resync=True)
    assert len(full.put) == 2 and full.delete == [] and full.resync


def test_the_rollout_report_travels_as_deltas_and_merges_back() -> None:
    def entry(name: str, v: str) -> dict[str, Any]:
        return {"name": name, "versions": {"lds": v}, "acked": {"lds": v}}

    one = {"default": {"settledRevision": 5, "dataplanes": {"a": entry("a", "1"), "b": entry("b", "1")}}}
    full = report_delta(None, one)
    assert full is not None and full["default"]["full"] and len(full["default"]["dataplanes"]) == 2
    held: dict[str, Any] = {}
    merge_report(held, full, 10, 10)
    two = {"default": {"settledRevision": 6, "dataplanes": {"a": entry("a", "2")}}}
    delta = report_delta(one, two)
    assert delta == {"default": {"settledRevision": 6, "dataplanes": [entry("a", "2")], "gone": ["b"]}}
    merge_report(held, delta, 10, 10)
    assert held == two
    assert report_delta(two, two) is None  # nothing changed: nothing sent
    merge_report(held, {"default": None}, 10, 10)
    assert held == {}


def test_the_inventory_counts_healthy_instances_per_tag_set() -> None:
    eps = [LocalEndpoint("orders", {"service": "orders", "version": "v1"}, True),
           LocalEndpoint("orders", {"service": "orders", "version": "v1"}, True),
           LocalEndpoint("orders", {"service": "orders", "version": "v2"}, False),
           LocalEndpoint("gone", {"service": "gone"}, False)]  # fmt: skip
    inv = inventory("zone-a", eps, {"orders": "http"}, IngressAddress(address="10.0.0.5", port=10001))
    (spec,) = inv.values()
    assert spec.service == "orders" and spec.protocol == "http" and spec.healthy() == 2
    assert [i.tags for i in spec.instances] == [{"version": "v1"}]


def test_a_remote_service_renders_at_the_remote_ingress_after_local_instances() -> None:
    local = KINDS.decode({"kind": "Dataplane", "mesh": "default", "name": "orders-a", "spec": {
        "address": "10.0.1.2", "inbound": [{"port": 9000, "servicePort": 8080, "tags": {"service": "orders"}}]}})  # fmt: skip
    remote = _zs("zone-b", "orders", 3, n=2)
    snap = MeshSnapshot.build(MESH, [local.with_version(2), remote], 3, zone="zone-a")
    eps = snap.endpoints["orders"]
    assert {(e.address, e.remote, e.tags["zone"]) for e in eps} == {("10.0.1.2", False, "zone-a"), ("10.0.0.9", True, "zone-b")}
    cla = load_assignment("orders", eps)
    by_zone = {g.locality.zone: g for g in cla.endpoints}
    assert by_zone["zone-a"].priority == 0 and by_zone["zone-b"].priority == 1  # failover, not sharing
    assert by_zone["zone-b"].lb_endpoints[0].load_balancing_weight.value == 2
    only_remote = load_assignment("orders", [e for e in eps if e.remote])
    assert [g.priority for g in only_remote.endpoints] == [0]  # reachable by the same name
    # standalone control planes ignore ZoneService records
    assert [e.remote for e in MeshSnapshot.build(MESH, [local, remote], 3).endpoints["orders"]] == [False]


def test_the_ca_key_is_sealed_for_one_zone_process() -> None:
    box = ca_transfer.ZoneBox()
    sealed = ca_transfer.seal_for(box.public, b"KEY", ca_transfer.purpose("zone-a", "default"))
    assert b"KEY" not in sealed.encode()
    assert box.open(sealed, ca_transfer.purpose("zone-a", "default")) == b"KEY"
    with pytest.raises(InvalidTag):
        box.open(sealed, ca_transfer.purpose("zone-b", "default"))  # bound to the zone and mesh
    with pytest.raises(InvalidTag):
        ca_transfer.ZoneBox().open(sealed, ca_transfer.purpose("zone-a", "default"))  # another process


# -- real control planes --------------------------------------------------------------


async def eventually(check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if asyncio.iscoroutine(got):
            got = await got
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def _settings(path: Path, **kw: Any) -> Settings:
    path.mkdir(parents=True, exist_ok=True)
    return Settings(data_dir=path, store_url=f"sqlite:///{path / 'meshline.db'}", api_address="127.0.0.1:0",
                    xds_address="127.0.0.1:0", auth=True, debounce=0.001, status_flush=0.05, **kw)  # fmt: skip


class Plane:
    def __init__(self, cp: ControlPlane) -> None:
        self.cp = cp
        self.admin = (cp.settings.data_dir / "admin.token").read_text().strip()
        self.http = httpx.AsyncClient(base_url=cp.api_url, timeout=10)

    async def call(self, method: str, path: str, token: str | None = None, **kw: Any) -> httpx.Response:
        return await self.http.request(method, path, headers={"Authorization": f"Bearer {token or self.admin}"}, **kw)

    def held(self, kind: str, mesh: str = "default") -> dict[str, Resource]:
        return {r.name: r for r in self.cp.ctx.model.of_kind(mesh, kind)}

    async def close(self) -> None:
        await self.http.aclose()
        await self.cp.stop()


async def _plane(settings: Settings) -> Plane:
    cp = build_control_plane(settings)
    await cp.start()
    return Plane(cp)


class World:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.zones: dict[str, Plane] = {}
        self.glob: Plane | None = None

    async def zone_token(self, zone: str) -> tuple[str, Path]:
        assert self.glob is not None
        r = await self.glob.call("POST", "/api/v1/tokens", json={"kind": "zone", "zone": zone})
        assert r.status_code == 201, r.text
        path = self.tmp / f"{zone}.token"
        path.write_text(r.json()["token"])
        return r.json()["id"], path

    async def start_zone(self, zone: str, token_file: Path) -> Plane:
        assert self.glob is not None
        plane = await _plane(_settings(self.tmp / zone, mode="zone", zone=zone, global_url=self.glob.cp.api_url,
                                       zone_token_file=token_file, create_default_mesh=False))  # fmt: skip
        self.zones[zone] = plane
        return plane


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def world(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[World]:
    """Global on SQLite, and on PostgreSQL (its store of record in production)."""
    monkeypatch.setenv("MESHLINE_ZONE_POLL_S", "2")
    w = World(tmp_path)
    settings = _settings(tmp_path / "global", mode="global", zone="global")
    if request.param == "postgresql":
        settings.store_url = request.getfixturevalue("database_url")
    w.glob = await _plane(settings)
    try:
        yield w
    finally:
        for z in w.zones.values():
            await z.close()
        await w.glob.close()


def _dataplane(name: str, service: str, address: str, port: int, proxy: str = "sidecar") -> dict[str, Any]:
    spec: dict[str, Any] = {"address": address, "inbound": [{"port": port, "servicePort": port + 1,
                                                              "tags": {"service": service, "protocol": "http"}}]}
    if proxy != "sidecar":
        spec["proxy"] = proxy
    return {"kind": "Dataplane", "mesh": "default", "name": name, "spec": spec}


TIMEOUT_DOC = {"kind": "Timeout", "mesh": "default", "name": "orders-timeout",
               "spec": {"destinations": [{"match": {"service": "orders"}}], "conf": {"connectTimeout": "2s"}}}


async def test_policies_go_down_services_go_up_and_zones_refuse_what_global_authors(world: World) -> None:
    g = world.glob
    assert g is not None
    _, token_a = await world.zone_token("zone-a")
    _, token_b = await world.zone_token("zone-b")
    a = await world.start_zone("zone-a", token_a)
    b = await world.start_zone("zone-b", token_b)
    r = await g.call("POST", "/api/v1/apply", json={"resources": [TIMEOUT_DOC]})
    assert r.status_code == 200, r.text
    for z in (a, b):
        got = await eventually(lambda z=z: z.held("Timeout").get("orders-timeout"), "the Timeout in the zone")  # type: ignore[misc]
        assert got.labels[ORIGIN] == "global"  # it says where it was authored
        mesh = z.cp.ctx.model.mesh("default")
        assert mesh is not None and mesh.spec.mtls.ca.type == "provided"  # type: ignore[attr-defined]
    # one CA across zones: every zone signs with global's
    bundle_a = (await a.call("GET", "/api/v1/ca/default/trust-bundle")).json()
    bundle_g = (await g.call("GET", "/api/v1/ca/default/trust-bundle")).json()
    assert bundle_a["trustBundle"] == bundle_g["trustBundle"] and bundle_a["caId"] == bundle_g["caId"]

    # a zone refuses what global authors, pointing there; global refuses dataplanes
    r = await a.call("POST", "/api/v1/apply", json={"resources": [TIMEOUT_DOC]})
    assert r.status_code == 422 and g.cp.api_url in r.text, r.text
    r = await a.call("DELETE", "/api/v1/meshes/default/timeouts/orders-timeout")
    assert r.status_code == 403 and "global" in r.text
    r = await g.call("POST", "/api/v1/apply", json={"resources": [_dataplane("x", "orders", "127.0.0.9", 7000)]})
    assert r.status_code == 422 and "never talks to dataplanes" in r.text

    # zone b's instances (and its ingress) go up to global and on to zone a, counts only
    for doc in (_dataplane("ingress-b", "zone-ingress", "127.0.0.12", 10001, proxy="zone-ingress"),
                _dataplane("orders-b1", "orders", "127.0.0.13", 9000), _dataplane("orders-b2", "orders", "127.0.0.14", 9000)):
        r = await b.call("POST", "/api/v1/apply", json={"resources": [doc]})
        assert r.status_code == 200, r.text

    def remote_orders() -> ZoneServiceSpec | None:
        for zs in a.held(ZONE_SERVICE).values():
            assert isinstance(zs.spec, ZoneServiceSpec)
            if zs.spec.zone == "zone-b" and zs.spec.service == "orders" and zs.spec.healthy() == 2 and zs.spec.ingress:
                return zs.spec
        return None

    spec = await eventually(remote_orders, "zone b's orders in zone a")
    # a service only zone b runs has its VIP in zone a too (transparent callers reach orders.mesh)
    await eventually(lambda: a.held("Service").get("orders"), "a VIP for orders in zone a")
    # a zone's dataplanes carry its zone tag (locality, failover order, source_zone in metrics)
    orders_b1 = b.cp.ctx.model.get(ResourceKey("Dataplane", "default", "orders-b1"))
    assert orders_b1 is not None and orders_b1.spec.inbound[0].tags["zone"] == "zone-b"  # type: ignore[attr-defined]
    wrong = _dataplane("orders-x", "orders", "127.0.0.15", 9000)
    wrong["spec"]["inbound"][0]["tags"]["zone"] = "zone-a"
    r = await b.call("POST", "/api/v1/apply", json={"resources": [wrong]})
    assert r.status_code == 422 and "spec.inbound[0].tags.zone" in r.text, r.text
    assert spec.ingress == IngressAddress(address="127.0.0.12", port=10001)
    at_global = [zs for zs in g.held(ZONE_SERVICE).values() if zs.labels.get(ZONE) == "zone-b"]
    assert at_global and all(zs.labels[ORIGIN] == "zone" for zs in at_global)
    assert not any(r.kind == "Dataplane" for r in g.cp.ctx.model.resources("default").values())
    snap = a.cp.reconciler.mesh_snapshot("default")
    assert snap is not None
    await eventually(lambda: (s := a.cp.reconciler.mesh_snapshot("default")) is not None
                     and any(e.remote for e in s.endpoints.get("orders", ())), "the remote endpoint rendered")  # fmt: skip

    # get zones at global: both connected, nothing behind
    async def synced() -> bool:
        items = {z["name"]: z for z in (await g.call("GET", "/api/v1/zones")).json()["items"]}
        return all(items.get(n, {}).get("connected") and items[n]["versionsBehind"] == 0 for n in ("zone-a", "zone-b"))

    await eventually(synced, "both zones synced in get zones")
    own = (await a.call("GET", "/api/v1/zones")).json()["items"][0]
    assert own["name"] == "zone-a" and own["connected"] and own["errors"] == []

    # a zone gone for good is forgotten at global: the others stop routing to it
    await b.close()
    del world.zones["zone-b"]
    r = await g.call("DELETE", "/api/v1/zones/zone-b")
    assert r.status_code == 200 and r.json()["services"] >= 1, r.text
    await eventually(lambda: not [z for z in a.held(ZONE_SERVICE).values() if z.spec.zone == "zone-b"],  # type: ignore[attr-defined]
                     "zone b's services gone from zone a")
    assert (await g.call("DELETE", "/api/v1/zones/zone-x")).status_code == 404


async def test_a_zone_token_is_bound_to_its_zone_and_dies_when_revoked(world: World) -> None:
    g = world.glob
    assert g is not None
    token_id, token_a = await world.zone_token("zone-a")
    token = token_a.read_text()
    r = await g.call("GET", "/api/v1/zones/zone-b/sync/down", token=token)
    assert r.status_code == 403 and "zone-a" in r.text  # another zone's name
    r = await g.call("GET", "/api/v1/meshes", token=token)
    assert r.status_code == 403 and "zone token" in r.text  # nothing but the sync
    r = await g.call("POST", "/api/v1/apply", token=token, json={"resources": [TIMEOUT_DOC]})
    assert r.status_code == 403
    assert (await g.call("GET", "/api/v1/zones/zone-a/sync/down?since=0", token=token)).status_code == 200
    a = await world.start_zone("zone-a", token_a)
    await eventually(lambda: a.cp.ctx.model.mesh("default") is not None, "the mesh in zone a")
    r = await g.call("POST", f"/api/v1/tokens/{token_id}/revoke")
    assert r.status_code == 200, r.text
    r = await g.call("GET", "/api/v1/zones/zone-a/sync/down?since=0", token=token)
    assert r.status_code == 401
    sync = a.cp.ctx.services  # the zone keeps serving and says why it is cut off

    async def refused() -> bool:
        items = (await a.call("GET", "/api/v1/zones")).json()["items"]
        return not items[0]["connected"] and any("401" in e for e in items[0]["errors"])

    await eventually(refused, "zone a to report the revoked token")
    assert sync is not None and a.cp.ctx.model.mesh("default") is not None


async def test_a_zone_resumes_after_a_restart_without_a_full_resend(world: World) -> None:
    g = world.glob
    assert g is not None
    _, token_a = await world.zone_token("zone-a")
    docs = [{**TIMEOUT_DOC, "name": f"t{i}"} for i in range(20)]
    assert (await g.call("POST", "/api/v1/apply", json={"resources": docs})).status_code == 200
    a = await world.start_zone("zone-a", token_a)
    await eventually(lambda: len(a.held("Timeout")) == 20, "20 timeouts in zone a")
    await a.close()
    del world.zones["zone-a"]
    changed = {**TIMEOUT_DOC, "name": "t3", "spec": {**TIMEOUT_DOC["spec"], "conf": {"connectTimeout": "3s"}}}  # type: ignore[dict-item]
    assert (await g.call("POST", "/api/v1/apply", json={"resources": [changed]})).status_code == 200
    assert (await g.call("DELETE", "/api/v1/meshes/default/timeouts/t5")).status_code == 200
    batches: list[list[tuple[str, str]]] = []
    original = httpx.AsyncClient.get

    async def measured(self: httpx.AsyncClient, url: Any, **kw: Any) -> httpx.Response:
        r = await original(self, url, **kw)
        if "/sync/down" in str(url):
            batches.append([(p.get("kind", ""), p.get("name", "")) for p in r.json()["put"]])
        return r

    httpx.AsyncClient.get = measured  # type: ignore[method-assign]
    try:
        a = await world.start_zone("zone-a", token_a)

        def caught_up() -> bool:
            held = a.held("Timeout")
            t3 = held.get("t3")
            return "t5" not in held and t3 is not None and "3s" in str(t3.spec.to_json())

        await eventually(caught_up, "zone a to catch up")
    finally:
        httpx.AsyncClient.get = original  # type: ignore[method-assign]
    # of the 20 Timeouts only the changed one travelled (and the deletion): no full resend; a
    # write global made meanwhile to another resource (the Mesh's status) may ride along
    assert batches and [x for x in batches[0] if x[0] == "Timeout"] == [("Timeout", "t3")], batches
    assert len(batches[0]) <= 3, batches
