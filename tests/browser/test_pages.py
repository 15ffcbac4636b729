"""Every page of the dashboard in a real browser against a real mesh (three Envoys, real
traffic, mTLS strict, authentication on): what each page shows is what the mesh did.

* overview, service, dataplane and policy pages render with real data;
* a service's requests/s chart counts, in its last bucket, the requests this test sent;
* a deep link opens its page; the back button returns;
* a NACK this test causes appears on the dataplane page in Envoy's words;
* a bad YAML shows its field-path error at its line and writes nothing; a good one shows its
  diff and dry run, and only then is applied and takes effect (a request times out);
* a read-only sign-in has no edit controls.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect

from meshline.testing.mesh import MeshHarness, Sidecar, wait_until
from meshline.testing.nack import BAD_REGEX, TRIGGER, breakable_control_plane, trigger_dataplane
from meshline.testing.servers import HttpTestServer
from tests.browser.conftest import SCREENSHOTS, Browser

pytestmark = pytest.mark.e2e

TIMEOUT_POLICY = """
kind: Timeout
mesh: default
name: web-to-orders
spec:
  sources: [{match: {service: web}}]
  destinations: [{match: {service: orders}}]
  conf: {http: {requestTimeout: 10s}}
"""
STEP_S = 10  # the series' bucket (telemetry.series.STEP_S)
GRAFANA = "http://grafana.invalid:3000"  # only linked to, never reached


class World:
    def __init__(self, harness: MeshHarness, sidecars: dict[str, Sidecar], orders: HttpTestServer,
                 inventory: HttpTestServer) -> None:
        self.harness = harness
        self.sc = sidecars
        self.orders = orders
        self.inventory = inventory
        self.admin = harness.admin_token() or ""

    def url(self, fragment: str = "", token: str | None = None) -> str:
        token = self.admin if token is None else token
        if token:
            fragment += ("&" if "?" in fragment else "?") + f"token={token}" if fragment else f"#token={token}"
        return f"{self.harness.api_url}/{fragment}"

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.harness.api_url + path, headers={"Authorization": f"Bearer {self.admin}"}, timeout=10)

    def send(self, src: str, dst: str, paths: list[str]) -> list[int]:
        with httpx.Client(base_url=self.sc[src].url(dst), timeout=10) as client:
            return [client.get(p).status_code for p in paths]

    def edge_total(self, src: str, dst: str) -> int:
        edges = self.get("/api/v1/meshes/default/stats").json()["edges"]
        return next((e["total"] for e in edges if (e["source"], e["destination"]) == (src, dst)), 0)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with HttpTestServer("orders-1") as orders, HttpTestServer("inventory-1") as inventory:
        spec = {"mtls": {"mode": "strict"}, "defaultPermission": "allow"}
        with MeshHarness(tmp_path_factory.mktemp("browser"), mtls="strict", auth=True, mesh_spec=spec,
                         build=breakable_control_plane, overrides={"grafana_url": GRAFANA}) as harness:
            harness.apply(TIMEOUT_POLICY)
            sidecars = {
                "inventory": harness.sidecar("inventory", inventory.port, tags={"version": "v1", "zone": "east"}),
                "orders": harness.sidecar("orders", orders.port, tags={"version": "v2", "zone": "east"},
                                          upstreams=["inventory"]),
                "web": harness.sidecar("web", 1, tags={"version": "v1", "zone": "west"}, upstreams=["orders"]),
            }
            harness.wait_in_sync()
            w = World(harness, sidecars, orders, inventory)
            for src, dst in (("web", "orders"), ("orders", "inventory")):
                wait_until(lambda s=src, d=dst: w.send(s, d, ["/warm-up"]) == [200], 20, 0.2, f"{src} -> {dst}")
            yield w


DOCS_SHOTS = {"overview", "service", "dataplane", "dataplane-nack", "policy", "apply-bad", "apply-dry-run",
              "read-only", "graph-focus"}  # fmt: skip


def shot(page: Page, name: str) -> None:
    """A full-page screenshot into build/browser-screenshots/; with MESHLINE_DOCS_SCREENSHOTS=DIR,
    the pages docs/dashboard.md shows also go to DIR (at most 1,100 px tall, to stay small)."""
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
    docs = os.environ.get("MESHLINE_DOCS_SCREENSHOTS")
    if docs and name in DOCS_SHOTS:
        height = min(1100, int(page.evaluate("document.documentElement.scrollHeight")))
        page.screenshot(path=str(Path(docs) / f"dashboard-{name}.png"), full_page=True,
                        clip={"x": 0, "y": 0, "width": page.viewport_size["width"] if page.viewport_size else 1280,
                              "height": height})


def no_errors(browser: Browser, *expected: int) -> None:
    """No script error, no CSP violation; failed loads only with the statuses a test caused."""
    def caused(e: str) -> bool:
        return any(f"status of {code} " in e for code in (401, *expected))
    assert [e for e in browser.errors if not caused(e)] == []


def open_page(browser: Browser, url: str, **size: int) -> Page:
    page = browser.page(**size)
    page.goto(url)
    return page


def test_every_page_renders_real_data_and_the_chart_counts_the_requests_sent(world: World, browser: Browser) -> None:
    # Send a burst inside one 10 s bucket, after everything sent before it is counted.
    wait_until(lambda: world.edge_total("web", "orders") > 0, 20, 0.1, "the warm-up counted")
    before = world.edge_total("web", "orders")
    counted_in = int(time.time()) // STEP_S  # the bucket of the last counted request, or a later one
    wait_until(lambda: int(time.time()) // STEP_S > counted_in and 1 <= time.time() % STEP_S < 6, 2 * STEP_S, 0.05,
               "the start of a fresh 10 s bucket")
    bucket = int(time.time()) // STEP_S * STEP_S
    assert world.send("web", "orders", [f"/burst/{i}" for i in range(12)]) == [200] * 12
    wait_until(lambda: world.edge_total("web", "orders") == before + 12, 20, 0.1, "the burst counted")

    # -- the mesh's overview --------------------------------------------------------------
    page = open_page(browser, world.url())
    rows = page.locator("table.dataplanes tbody tr[data-state='in-sync']")
    expect(rows).to_have_count(3)
    expect(page.locator("svg.graph g.edge[data-source='web'][data-destination='orders']")).to_have_count(1)
    expect(page.locator("table.services tr[data-service='orders'] th")).to_have_text("orders")
    shot(page, "overview")

    # -- a service: one click from the overview --------------------------------------------
    page.locator("table.services tr[data-service='orders'] th a").click()
    expect(page).to_have_url(re.compile(r"#/meshes/default/services/orders$"))
    expect(page.locator("#page-title")).to_have_text("Service orders")
    expect(page.locator("table.instances tr[data-dataplane='orders-1'][data-state='in-sync'] td").nth(0)).to_have_text("v2")
    expect(page.locator("table.instances tr[data-dataplane='orders-1'] td").nth(1)).to_have_text("east")
    expect(page.locator("table.edges-in tr[data-edge='web>orders']")).to_have_count(1)
    expect(page.locator("table.edges-out tr[data-edge='orders>inventory']")).to_have_count(1)
    rps = page.locator("svg.chart[data-chart='rps'] g[data-series='all'] circle")
    expect(rps.first).to_be_attached()
    points = page.evaluate("""() => [...document.querySelectorAll("svg.chart[data-chart='rps'] g[data-series='all'] circle")]
        .map(c => ({t: Number(c.dataset.t), requests: Number(c.dataset.requests), value: Number(c.dataset.value)}))""")
    busy = [p for p in points if p["requests"] > 0]
    assert busy[-1] == {"t": bucket, "requests": 12, "value": 1.2}, busy  # the last point: the 12 just sent
    assert sum(p["requests"] for p in points) == before + 12  # every request, in one bucket or another
    applied = page.locator("table.policies-applied tr[data-policy='Timeout/web-to-orders']")
    expect(applied).to_contain_text("service=web")  # why it applies, as inspect says
    expect(applied).to_contain_text("outbound orders")
    grafana = page.locator("a.grafana")
    assert grafana.get_attribute("href") == f"{GRAFANA}/d/meshline-service?var-mesh=default&var-service=orders"
    shot(page, "service")

    # -- the policy, from the service page; back returns ---------------------------------------
    applied.locator("a[data-link='policy']").click()
    expect(page).to_have_url(re.compile(r"#/meshes/default/policies/Timeout/web-to-orders$"))
    expect(page.locator("#policy-yaml")).to_contain_text("kind: Timeout")
    expect(page.locator("#policy-yaml")).to_contain_text("requestTimeout: 10s")
    expect(page.locator("table.policy-targets tr[data-dataplane='web-1']")).to_contain_text("outbound orders")
    expect(page.locator("table.policy-targets tbody tr")).to_have_count(1)
    expect(page.locator("[data-edit='policy']")).to_be_visible()  # an admin may edit it
    shot(page, "policy")
    page.go_back()
    expect(page.locator("#page-title")).to_have_text("Service orders")

    # -- a dataplane: certificate, xDS per type, its Envoy configuration -------------------------
    page.locator("table.instances a[data-link='dataplane']").click()
    expect(page.locator("#page-title")).to_have_text("Dataplane orders-1")
    expect(page.locator("[data-fact='identity']")).to_have_text(re.compile(r"^spiffe://.+/orders$"))
    expect(page.locator("[data-fact='certificate']")).to_contain_text("expires in")
    for xds_type in ("CDS", "EDS", "LDS", "RDS"):
        expect(page.locator(f"table.versions tr[data-type='{xds_type}'] td").last).to_have_text("in sync")
    count = page.locator("#config-count")
    expect(count).to_have_text(re.compile(r"^\d+ resources$"))
    total = int(count.inner_text().split()[0])
    page.fill("#config-search", "inventory")
    expect(count).to_contain_text("match “inventory”")
    assert 0 < int(count.inner_text().split()[0]) < total
    expect(page.locator("details[data-resource^='Cluster/'] summary", has_text="inventory").first).to_be_visible()
    # successes are sampled while nobody looks; this page watches its service while open,
    # so a request sent now shows, success and all
    recent = page.locator("table.recent-requests tbody tr", has_text="/while-open/")
    for i in range(40):
        assert world.send("web", "orders", [f"/while-open/{i}"]) == [200]
        if recent.count():
            break
        page.wait_for_timeout(500)
    recent = recent.first  # web -> orders-1
    expect(recent).to_have_attribute("data-direction", "in")
    expect(recent.locator("td").nth(3)).to_have_text("200")
    shot(page, "dataplane")

    # -- recent failures on a service page, with their explanation -----------------------------
    world.inventory.behaviour.fail_ratio = 1.0
    try:
        assert world.send("orders", "inventory", [f"/broken/{i}" for i in range(3)]) == [503] * 3
    finally:
        world.inventory.behaviour.fail_ratio = 0.0
    page.goto(world.url("#/meshes/default", token=""))  # from the failing arrow, one click to the callee's failures
    edge = page.locator("svg.graph g.edge[data-source='orders'][data-destination='inventory']")
    expect(edge).to_have_class(re.compile(r"health-bad"))
    edge.locator("a").dispatch_event("click")
    expect(page.locator("#page-title")).to_have_text("Service inventory")
    failure = page.locator("table.failures tbody tr", has_text="/broken/2")
    expect(failure.locator(".explanation")).to_have_text("inventory (inventory-1) answered 503")
    failure.locator("button", has_text="both halves").click()
    expect(failure.locator(".halves li")).to_have_count(2)
    expect(failure.locator(".halves li").first).to_contain_text("outbound at orders-1: 503")
    shot(page, "service-failures")
    no_errors(browser)


def test_a_deep_link_opens_the_right_page(world: World, browser: Browser) -> None:
    page = open_page(browser, world.url("#/meshes/default/dataplanes/web-1"))
    expect(page.locator("#page-title")).to_have_text("Dataplane web-1")
    expect(page.locator("nav a[aria-current='page']")).to_have_text("Overview")
    assert "token=" not in page.url  # the token left the address at once
    page.goto(world.url("#/meshes/default/policies", token=""))
    expect(page.locator("#view-policies tr[data-policy='Timeout/web-to-orders']")).to_be_visible()
    page.goto(world.url("#/meshes/nowhere/services/orders", token=""))
    expect(page.locator("#status")).to_contain_text("mesh 'nowhere' does not exist")
    no_errors(browser)


def test_a_nack_appears_on_the_dataplane_page_in_envoys_words(world: World, browser: Browser) -> None:
    page = open_page(browser, world.url("#/meshes/default/dataplanes/web-1"))
    expect(page.locator(".nack-none")).to_be_visible()
    world.harness.apply(trigger_dataplane("orders"))  # web-1's route to orders: a regex Envoy refuses
    try:
        box = page.locator(".nack-box[data-nack='current']")
        expect(box.locator(".nack-message")).to_contain_text(BAD_REGEX, timeout=20_000)
        expect(page.locator("table.versions td", has_text="NACKed")).not_to_have_count(0)
        expect(page.locator("#view-page .badge").first).to_have_text("rejected")
        shot(page, "dataplane-nack")
    finally:
        world.harness.api.request("DELETE", f"/api/v1/meshes/default/dataplanes/{TRIGGER}")
    expect(page.locator(".nack-box[data-nack='resolved']")).to_be_visible(timeout=20_000)
    expect(page.locator("#view-page .badge").first).to_have_text("in-sync")
    no_errors(browser)


BAD = """kind: Timeout
mesh: default
name: web-to-orders-typo
spec:
  sources: [{match: {service: web}}]
  conf:
    http: {requestTimeut: 1s}
"""


def test_a_bad_yaml_shows_the_field_path_error_and_writes_nothing(world: World, browser: Browser) -> None:
    page = open_page(browser, world.url("#/meshes/default/apply"))
    page.fill("#yaml", BAD)
    page.click("#dry-run")
    problem = page.locator(".problem[data-path='spec.conf.http.requestTimeut']")
    expect(problem).to_contain_text("did you mean 'requestTimeout'")
    assert problem.get_attribute("data-line") == "7"  # under the line that has the typo
    expect(page.locator("#apply-state")).to_contain_text("nothing was written")
    expect(page.locator("#apply")).to_be_disabled()
    shot(page, "apply-bad")
    assert world.get("/api/v1/meshes/default/timeouts/web-to-orders-typo").status_code == 404
    page.fill("#yaml", "kind: Timeout\nkind: Retry\n")  # not even YAML Meshline takes: at its line too
    page.click("#dry-run")
    expect(page.locator(".problem[data-line='2']")).to_contain_text("appears twice")
    no_errors(browser, 404, 422)  # the lookup of a resource that does not exist yet; the refusals


def test_a_good_yaml_shows_its_diff_and_dry_run_then_takes_effect(world: World, browser: Browser) -> None:
    page = open_page(browser, world.url("#/meshes/default/policies/Timeout/web-to-orders"))
    page.click("[data-edit='policy']")
    expect(page).to_have_url(re.compile(r"#/meshes/default/apply\?kind=Timeout&name=web-to-orders$"))
    editor = page.locator("#yaml")
    expect(editor).to_have_value(re.compile("requestTimeout: 10s"))
    editor.fill(editor.input_value().replace("requestTimeout: 10s", "requestTimeout: 300ms"))
    page.click("#dry-run")
    expect(page.locator("#apply-state")).to_contain_text("Dry run passed")
    diff = page.locator(".diff-box[data-resource='Timeout/web-to-orders']")
    expect(diff.locator(".del")).to_have_text(re.compile(r"requestTimeout: 10s"))
    expect(diff.locator(".add")).to_have_text(re.compile(r"requestTimeout: 300ms"))
    affected = page.locator("#affected li[data-dataplane]")
    expect(affected).to_have_count(1)
    expect(affected.first).to_have_attribute("data-dataplane", "web-1")
    shot(page, "apply-dry-run")
    world.orders.behaviour.delay = 1.0
    try:
        assert world.send("web", "orders", ["/slow-before"]) == [200]  # the dry run changed nothing
        page.click("#apply")
        expect(page.locator("#applied li[data-result='configured']")).to_have_count(1)
        shot(page, "apply-done")
        wait_until(lambda: world.send("web", "orders", ["/slow-after"]) == [504], 20, 0.2, "the new timeout")
    finally:
        world.orders.behaviour.delay = 0.0
        world.harness.apply(TIMEOUT_POLICY)
    no_errors(browser)


def test_a_read_only_sign_in_has_no_edit_controls(world: World, browser: Browser) -> None:
    body: dict[str, Any] = {"kind": "readonly", "ttl": "1h", "description": "browser test"}
    token = world.harness.api.request("POST", "/api/v1/tokens", json=body)["token"]
    page = open_page(browser, world.url(token=""))
    expect(page.locator("#signin")).to_be_visible()
    page.fill("#token", token)
    page.click("#signin-form button[type=submit]")
    expect(page.locator("table.dataplanes tbody tr")).to_have_count(3)
    expect(page.locator("#nav-apply")).to_be_hidden()
    page.goto(world.url("#/meshes/default/policies/Timeout/web-to-orders", token=""))
    expect(page.locator("#policy-yaml")).to_contain_text("kind: Timeout")
    expect(page.locator("[data-edit]")).to_have_count(0)
    page.goto(world.url("#/meshes/default/apply", token=""))
    expect(page.locator("#read-only")).to_contain_text("may not change resources")
    expect(page.locator("#yaml, #dry-run, #apply")).to_have_count(0)
    shot(page, "read-only")
    no_errors(browser)


def test_two_hundred_services_stay_readable_with_search_and_focus(tmp_path: Any, browser: Browser) -> None:
    with MeshHarness(tmp_path / "big") as harness:
        # svc-000 ... svc-199: each calls the next two (a declared upstream), registered without sidecars
        docs = [{"kind": "Dataplane", "mesh": "default", "name": f"svc-{i:03d}-1",
                 "spec": {"address": "127.0.0.1", "inbound": [{"port": 20000 + i, "servicePort": 30000 + i,
                          "tags": {"service": f"svc-{i:03d}", "protocol": "http"}}],
                          "outbound": [{"port": 40000 + j, "service": f"svc-{j:03d}"} for j in (i + 1, i + 2) if j < 200]}}
                for i in range(200)]
        harness.api.apply(docs)
        page = open_page(browser, f"{harness.api_url}/")
        expect(page.locator("#graph-note")).to_contain_text("200 services: the 40 busiest are drawn")
        expect(page.locator("svg.graph a.node")).to_have_count(40)
        page.fill("#graph-search", "svc-10")  # svc-100 ... svc-109
        expect(page.locator("svg.graph a.node")).to_have_count(10)
        expect(page.locator("#graph-note")).to_contain_text("10 of 200 services match")
        page.fill("#graph-search", "svc-150")
        page.click("#graph-form button[type=submit]")
        nodes = page.locator("svg.graph a.node")
        expect(nodes).to_have_count(5)  # its two callers and its two callees
        names = sorted(nodes.evaluate_all("ns => ns.map(n => n.dataset.service)"))
        assert names == ["svc-148", "svc-149", "svc-150", "svc-151", "svc-152"]
        expect(page.locator("svg.graph a.node.focus")).to_have_attribute("data-service", "svc-150")
        page.select_option("#graph-depth", "2")
        expect(nodes).to_have_count(9)
        shot(page, "graph-focus")
        page.locator("svg.graph a.node[data-service='svc-151']").click()
        expect(page.locator("#page-title")).to_have_text("Service svc-151")
        page.go_back()
        expect(page.locator("svg.graph a.node.focus")).to_have_attribute("data-service", "svc-150")  # kept
    no_errors(browser)
