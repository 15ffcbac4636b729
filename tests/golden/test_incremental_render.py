"""Incremental rendering (the control plane's speed-ups) gives exactly what rendering from scratch gives.

The reconciler re-renders only the dataplanes a change can reach and reuses sections carried
over from the previous snapshot. Here a random sequence of real changes (dataplanes joining,
leaving, changing tags, outbounds and readiness; every policy of the golden tests applied and
deleted; the Mesh's mTLS and logging changed; dataplanes going offline) is applied to a
store; after each batch, every dataplane's pushed config must equal a from-scratch render of
the same resources (same per-type versions, i.e. the same bytes), and render errors must match.
"""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshline.controlplane.reconciler import Reconciler
from meshline.core.resource import Resource
from meshline.kinds import default_kinds
from meshline.policies import plugins
from meshline.render.mesh_snapshot import MeshSnapshot
from meshline.render.render import render
from meshline.store.factory import open_store
from meshline.telemetry.render_step import PLUGIN as TELEMETRY
from meshline.xds import names
from meshline.xds.cache import SnapshotCache

TESTS = Path(__file__).resolve().parents[1]
MESHES = [
    {"mtls": {"mode": "strict"}},
    {"mtls": {"mode": "disabled"}},
    {"mtls": {"mode": "permissive"}, "logging": {"stream": False}},
]


def pool() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every Dataplane and policy document of the golden tests (renamed to be unique)."""
    dataplanes: list[dict[str, Any]] = []
    policies: list[dict[str, Any]] = []
    files = sorted([*TESTS.glob("policies/**/*.yaml"), TESTS / "golden/core/mesh.input.yaml",
                    TESTS / "golden/transparent/mesh.input.yaml",  # transparent dataplanes, Services
                    TESTS / "golden/gateway/edge.input.yaml",  # a gateway, its MeshGateway and routes
                    TESTS / "golden/egress/mesh.input.yaml"])  # ExternalServices, an egress gateway
    for index, path in enumerate(files):
        if path.name.endswith(".golden.yaml"):
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if not isinstance(doc, dict) or doc.get("kind") in (None, "Mesh"):
                continue
            doc = {**doc, "mesh": "default"}
            if doc["kind"] == "Dataplane":
                dataplanes.append({**doc, "name": f"f{index}-{doc['name']}"})
            else:
                policies.append({**doc, "name": f"f{index}-{doc['name']}"})
    return dataplanes, policies


def variant(doc: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """The same dataplane, changed the way agents and users change them."""
    out = copy.deepcopy(doc)
    spec = out["spec"]
    roll = rng.random()
    if roll < 0.3:
        spec["ready"] = not spec.get("ready", True)
    elif roll < 0.5 and spec.get("outbound"):
        spec["outbound"] = spec["outbound"][1:]
    elif roll < 0.7:
        spec["inbound"][0]["tags"] = {**spec["inbound"][0]["tags"], "version": rng.choice(["v1", "v2", "v3"])}
    else:
        spec["address"] = f"10.9.{rng.randrange(250)}.{rng.randrange(1, 250)}"
    return out


class Harness:
    def __init__(self, reconciler: Reconciler, store: Any, kinds: Any) -> None:
        self.reconciler = reconciler
        self.store = store
        self.kinds = kinds
        self.offline: set[str] = set()

    async def put(self, doc: dict[str, Any]) -> None:
        await self.store.put(self.kinds.decode(doc))

    def check(self) -> int:
        """Compare every dataplane's cached config with a from-scratch render; return how many."""
        rec = self.reconciler
        resources = list(rec.model.resources("default").values())
        mesh = rec.model.mesh("default")
        assert mesh is not None
        # the protocols of services whose instances left are the reconciler's memory, an input
        fresh = MeshSnapshot.build(mesh, resources, rec.revision, frozenset(self.offline),
                                   known_protocols=rec.known_protocols.get("default"))
        checked = 0
        for dp in fresh.dataplanes.values():
            node = names.node_id("default", dp.name)
            try:
                expected = render(dp, fresh, rec.plugins)
            except Exception as err:
                assert rec.results.error(node) is not None, f"{dp.name}: from scratch fails ({err}), incrementally not"
                continue
            assert rec.results.error(node) is None, f"{dp.name}: incrementally fails: {rec.results.error(node)}"
            got = rec.cache.get(node)
            assert got is not None, dp.name
            assert got.versions() == expected.snapshot.versions(), dp.name
            last = rec.results.get(node)
            assert last is not None and last.applied == expected.applied, dp.name
            checked += 1
        return checked


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_incremental_equals_from_scratch(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    kinds = default_kinds()
    store = open_store("sqlite::memory:", kinds)
    await store.start()
    h: Harness | None = None
    reconciler = Reconciler(
        store, SnapshotCache(), [*plugins(), TELEMETRY], debounce=0,
        offline=lambda mesh: frozenset(h.offline if h else ()),
    )  # fmt: skip
    h = Harness(reconciler, store, kinds)
    dataplanes, policies = pool()
    assert len(dataplanes) > 20 and len(policies) > 30
    await h.put({"kind": "Mesh", "name": "default", "spec": MESHES[0]})
    for doc in rng.sample(dataplanes, 12):
        await h.put(doc)
    await reconciler.start()
    assert reconciler._task is not None
    reconciler._task.cancel()  # flushes are driven here, one at a time
    await reconciler._flush()
    present: dict[str, dict[str, Any]] = {}
    live_policies: dict[str, dict[str, Any]] = {}
    for r in reconciler.model.resources("default").values():
        if r.kind == "Dataplane":
            present[r.name] = next(d for d in dataplanes if d["name"] == r.name)
    checked = 0
    for _step in range(60):
        for _change in range(rng.choice([1, 1, 2, 3])):
            roll = rng.random()
            if roll < 0.25:
                doc = rng.choice(policies)
                live_policies[doc["name"]] = doc
                await h.put(doc)
            elif roll < 0.35 and live_policies:
                name = rng.choice(sorted(live_policies))
                doc = live_policies.pop(name)
                await store.delete(kinds.decode(doc).key)
            elif roll < 0.5:
                doc = rng.choice(dataplanes)
                present[doc["name"]] = doc
                await h.put(doc)
            elif roll < 0.6 and present:
                name = rng.choice(sorted(present))
                await store.delete(kinds.decode(present.pop(name)).key)
            elif roll < 0.8 and present:
                name = rng.choice(sorted(present))
                present[name] = variant(present[name], rng)
                await h.put(present[name])
            elif roll < 0.9 and present:
                name = rng.choice(sorted(present))
                h.offline ^= {name}
                reconciler.touch_mesh("default")
            else:
                await h.put({"kind": "Mesh", "name": "default", "spec": rng.choice(MESHES)})
        await reconciler._flush()
        checked += h.check()
    await reconciler.stop()
    await store.close()
    assert checked > 300


def test_changes_name_what_differs() -> None:
    kinds = default_kinds()

    def res(doc: dict[str, Any], version: int) -> Resource:
        return kinds.decode(doc).with_version(version)

    mesh = res({"kind": "Mesh", "name": "default", "spec": {}}, 1)
    dp = {"kind": "Dataplane", "mesh": "default", "name": "a-1",
          "spec": {"address": "10.0.0.1", "inbound": [{"port": 80, "tags": {"service": "a"}}]}}  # fmt: skip
    route = {"kind": "HTTPRoute", "mesh": "default", "name": "r",
             "spec": {"destinations": [{"match": {"service": "b"}}], "rules": [{"timeout": "1s"}]}}  # fmt: skip
    one = MeshSnapshot.build(mesh, [res(dp, 2)], 2)
    two = MeshSnapshot.build(mesh, [res(dp, 2), res(route, 3)], 3, previous=one)
    assert two.since_previous is not None
    assert (two.since_previous.everything, two.since_previous.policy_services) == (False, frozenset({"b"}))
    assert two.since_previous.dataplanes == frozenset()
    not_ready = {**dp, "spec": {**dp["spec"], "ready": False}}
    three = MeshSnapshot.build(mesh, [res(not_ready, 4), res(route, 3)], 4, previous=two)
    assert three.since_previous is not None
    assert three.since_previous.dataplanes == frozenset({"a-1"})
    assert three.since_previous.services == frozenset({"a"})
    everyone = {**route, "spec": {"rules": [{"timeout": "2s"}]}}
    four = MeshSnapshot.build(mesh, [res(not_ready, 4), res(everyone, 5)], 5, previous=three)
    assert four.since_previous is not None and four.since_previous.everything


async def test_a_route_backend_counts_as_reached() -> None:
    """web calls orders; a route mirrors to orders-shadow: shadow's endpoints are in web's config."""
    kinds = default_kinds()
    store = open_store("sqlite::memory:", kinds)
    await store.start()
    reconciler = Reconciler(store, SnapshotCache(), [*plugins(), TELEMETRY], debounce=0)
    h = Harness(reconciler, store, kinds)
    docs = [d for d in yaml.safe_load_all((TESTS / "policies/httproute/mesh.input.yaml").read_text()) if d]
    for doc in docs:
        await h.put(doc)
    await h.put(yaml.safe_load((TESTS / "policies/httproute/features/mirror.yaml").read_text()))
    await reconciler.start()
    assert reconciler._task is not None
    reconciler._task.cancel()
    await reconciler._flush()
    web = names.node_id("default", "web-1")
    before = reconciler.cache.get(web)
    assert before is not None
    shadow = next(d for d in docs if d.get("name") == "orders-shadow-1")
    await h.put({**shadow, "spec": {**shadow["spec"], "address": "10.0.0.55"}})  # web does not call it directly
    await reconciler._flush()
    after = reconciler.cache.get(web)
    assert after is not None
    assert after.versions()["EDS"] != before.versions()["EDS"]
    assert h.check() >= 8
    await reconciler.stop()
    await store.close()
