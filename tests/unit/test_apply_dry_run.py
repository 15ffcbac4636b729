"""`POST /api/v1/apply?dryRun=true`: validated and checked exactly as an apply, nothing
written, and the answer names the dataplanes whose config would change (with the policies
they would gain) and leaves the others out; a bad document is refused the same way, and a
read-only token is refused a dry run as it is an apply."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from meshline.controlplane.settings import Settings
from meshline.testing.mesh import ControlPlaneThread
from meshline.testing.servers import free_port

TIMEOUT = {"kind": "Timeout", "mesh": "default", "name": "web-to-orders",
           "spec": {"sources": [{"match": {"service": "web"}}], "destinations": [{"match": {"service": "orders"}}],
                    "conf": {"http": {"requestTimeout": "3s"}}}}


def dataplane(name: str, service: str, outbound: list[dict[str, object]]) -> dict[str, object]:
    return {"kind": "Dataplane", "mesh": "default", "name": name,
            "spec": {"address": "127.0.0.1", "inbound": [{"port": free_port(), "servicePort": free_port(),
                     "tags": {"service": service, "protocol": "http"}}], "outbound": outbound}}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    data: Path = tmp_path_factory.mktemp("cp")
    cp = ControlPlaneThread(Settings(data_dir=data, store_url=f"sqlite:///{data / 'db'}", auth=True,
                                     api_address=f"127.0.0.1:{free_port()}", xds_address=f"127.0.0.1:{free_port()}"))
    cp.start()
    admin = (data / "admin.token").read_text().strip()
    with httpx.Client(base_url=cp.cp.api_url, headers={"Authorization": f"Bearer {admin}"}, timeout=20) as c:
        docs = [dataplane("orders-1", "orders", []), dataplane("web-1", "web", [{"port": 15003, "service": "orders"}]),
                dataplane("batch-1", "batch", [])]
        assert c.post("/api/v1/apply", json={"resources": docs}).status_code == 200
        yield c
    cp.stop()


def _settled(api: httpx.Client) -> int:
    for _ in range(200):
        sync = api.get("/api/v1/meshes/default/sync").json()
        if sync["settledRevision"] >= sync["revision"] and all(d["versions"] for d in sync["dataplanes"]):
            return int(sync["revision"])
    raise AssertionError("the reconciler did not settle")


def test_a_dry_run_writes_nothing_and_names_the_dataplanes_that_would_change(api: httpx.Client) -> None:
    revision = _settled(api)
    r = api.post("/api/v1/apply?dryRun=true", json={"resources": [TIMEOUT]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["dryRun"] is True
    assert body["items"] == [{"resource": "Timeout default/web-to-orders", "result": "created", "changed": True}]
    changed = {d["name"]: d for d in body["affected"]["default"]["dataplanes"]}
    assert set(changed) == {"web-1"}, changed  # the caller's outbound to orders; batch and orders unchanged
    assert {"kind": "Timeout", "name": "web-to-orders"}.items() <= changed["web-1"]["gained"][0].items()
    assert "orders" in changed["web-1"]["gained"][0]["target"] and changed["web-1"]["types"]
    assert body["affected"]["default"]["rendered"] == 3
    # nothing was written: no such resource, no new revision
    assert api.get("/api/v1/meshes/default/timeouts/web-to-orders").status_code == 404
    assert api.get("/api/v1/meshes/default/sync").json()["revision"] == revision


def test_an_unchanged_resource_changes_nothing(api: httpx.Client) -> None:
    batch = api.get("/api/v1/meshes/default/dataplanes/batch-1").json()
    doc = {k: batch[k] for k in ("kind", "mesh", "name", "spec")}
    body = api.post("/api/v1/apply?dryRun=1", json={"resources": [doc]}).json()
    assert body["items"][0]["changed"] is False and body["affected"] == {}


def test_a_bad_document_is_refused_with_its_field_path(api: httpx.Client) -> None:
    bad = {**TIMEOUT, "spec": {**TIMEOUT["spec"], "conf": {"http": {"requestTimeut": "3s"}}}}  # type: ignore[dict-item]
    r = api.post("/api/v1/apply?dryRun=true", json={"resources": [bad]})
    assert r.status_code == 422
    assert "spec.conf.http.requestTimeut" in r.text and "requestTimeout" in r.text
    assert api.post("/api/v1/apply?dryRun=maybe", json={"resources": [TIMEOUT]}).status_code == 422


def test_a_read_only_token_is_refused_a_dry_run(api: httpx.Client) -> None:
    token = api.post("/api/v1/tokens", json={"kind": "readonly", "ttl": "1h", "description": "test"}).json()["token"]
    r = httpx.post(f"{api.base_url}/api/v1/apply?dryRun=true", json={"resources": [TIMEOUT]},
                   headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 403 and "read-only" in r.text


def test_a_traffic_permission_dry_run_names_the_inbound_it_would_govern(api: httpx.Client) -> None:
    deny = {"kind": "TrafficPermission", "mesh": "default", "name": "no-web",
            "spec": {"sources": [{"match": {"service": "web"}}], "destinations": [{"match": {"service": "orders"}}],
                     "action": "deny"}}
    body = api.post("/api/v1/apply?dryRun=true", json={"resources": [deny]}).json()
    changed = {d["name"]: d for d in body["affected"]["default"]["dataplanes"]}
    assert set(changed) == {"orders-1"}, changed  # the callee's inbound decides, nobody else changes
    gained = changed["orders-1"]["gained"]
    assert [(g["kind"], g["name"]) for g in gained] == [("TrafficPermission", "no-web")]
    assert gained[0]["target"].startswith("inbound ")
    assert api.get("/api/v1/meshes/default/trafficpermissions/no-web").status_code == 404
