"""Labels on every resource: user labels kept, the control plane's origin and zone stamped on
what it stores, its reserved keys refused when they say something else, bad keys named."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from meshline.api.client import ApiClient
from meshline.controlplane.settings import Settings
from meshline.core.errors import MeshlineError, ValidationError
from meshline.core.labels import system_labels
from meshline.testing.mesh import ControlPlaneThread
from meshline.testing.servers import free_port

ROUTE = {"kind": "Dataplane", "mesh": "default", "name": "slow", "spec": {
    "address": "10.0.0.1", "inbound": [{"port": 8080, "servicePort": 9000, "tags": {"service": "web"}}]}}  # fmt: skip


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiClient]:
    data: Path = tmp_path_factory.mktemp("cp")
    cp = ControlPlaneThread(Settings(data_dir=data, store_url=f"sqlite:///{data / 'db'}", auth=False, zone="east",
                                     api_address=f"127.0.0.1:{free_port()}",
                                     xds_address=f"127.0.0.1:{free_port()}"))  # fmt: skip
    cp.start()
    client = ApiClient(cp.cp.api_url)
    yield client
    client.close()
    cp.stop()


def test_user_labels_are_kept_and_origin_and_zone_stamped(api: ApiClient) -> None:
    api.apply([{**ROUTE, "labels": {"team": "payments", "example.com/tier": "gold"}}])
    got = api.get("/api/v1/meshes/default/dataplanes/slow")
    assert got["labels"] == {"example.com/tier": "gold", "meshline.io/origin": "zone",
                             "meshline.io/zone": "east", "team": "payments"}  # fmt: skip
    mesh = api.get("/api/v1/meshes/default")  # made by the control plane itself: stamped too
    assert mesh["labels"]["meshline.io/zone"] == "east"
    # what `meshline get -o yaml` shows can be applied again: no new version
    again = api.apply([{k: got[k] for k in ("kind", "mesh", "name", "labels", "spec")}])
    assert again["items"][0]["version"] == got["version"]
    # a label change alone is a change
    changed = api.apply([{**ROUTE, "labels": {"team": "orders"}}])
    assert changed["items"][0]["version"] != got["version"]
    assert api.get("/api/v1/meshes/default/dataplanes/slow")["labels"]["team"] == "orders"


def test_reserved_and_malformed_labels_are_refused_naming_the_key(api: ApiClient) -> None:
    with pytest.raises(ValidationError) as err:
        api.apply([{**ROUTE, "name": "other", "labels": {"meshline.io/zone": "west", "team": "a"}}])
    assert "labels.meshline.io/zone: is set by the control plane (here: 'east')" in str(err.value)
    with pytest.raises(ValidationError, match="labels.bad key: must be .prefix/.name"):
        api.apply([{**ROUTE, "name": "other", "labels": {"bad key": "x"}}])
    with pytest.raises(ValidationError, match="labels.team: must be at most 63"):
        api.apply([{**ROUTE, "name": "other", "labels": {"team": "-x-"}}])
    with pytest.raises(ValidationError, match="labels.meshline.io/anything: is reserved"):
        api.apply([{**ROUTE, "name": "other", "labels": {"meshline.io/anything": "x"}}])
    with pytest.raises(MeshlineError):
        api.get("/api/v1/meshes/default/dataplanes/other")  # nothing was applied


def test_a_bad_zone_is_refused_at_start() -> None:
    with pytest.raises(MeshlineError, match="zone 'no such zone'"):
        system_labels(replace(Settings(), zone="no such zone").zone)
