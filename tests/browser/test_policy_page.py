"""A policy's page in a real browser says where it matched but lost to a more specific policy
of its kind; the service page finds its callers' policies by the section they shaped (its
structured id), not by the section's label."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from playwright.sync_api import expect

from meshline.testing.mesh import MeshHarness, wait_until
from tests.browser.conftest import SCREENSHOTS, Browser

pytestmark = pytest.mark.e2e

TIMEOUTS = """
kind: Timeout
mesh: default
name: web-to-orders
spec:
  sources: [{match: {service: web}}]
  destinations: [{match: {service: orders}}]
  conf: {http: {requestTimeout: 10s}}
---
kind: Timeout
mesh: default
name: anyone-to-orders
spec:
  destinations: [{match: {service: orders}}]
  conf: {http: {requestTimeout: 20s}}
"""


def dataplane(name: str, service: str, port: int, upstream: str = "") -> dict[str, object]:
    return {"kind": "Dataplane", "mesh": "default", "name": name, "spec": {
        "address": "127.0.0.1", "inbound": [{"port": port, "servicePort": port + 1,
                                             "tags": {"service": service, "protocol": "http"}}],
        "outbound": [{"port": 15001, "service": upstream}] if upstream else []}}


def test_a_policy_that_lost_says_where_and_to_which(tmp_path: Path, browser: Browser) -> None:
    with MeshHarness(tmp_path / "mesh", mtls="strict") as harness:
        for doc in (dataplane("orders-1", "orders", 21001), dataplane("web-1", "web", 21003, "orders"),
                    dataplane("admin-1", "admin", 21005, "orders")):
            harness.api.put(doc)
        harness.apply(TIMEOUTS)

        def rendered() -> bool:
            policies = {dp: harness.api.get(f"/api/v1/meshes/default/dataplanes/{dp}/inspect?config=0")["policies"]
                        for dp in ("web-1", "admin-1")}
            timeouts = {dp: {p["name"] for p in ps if p["kind"] == "Timeout"} for dp, ps in policies.items()}
            return timeouts == {"web-1": {"web-to-orders"}, "admin-1": {"anyone-to-orders"}}

        wait_until(rendered, 20, 0.1, "both Timeouts rendered")
        page = browser.page()
        page.goto(f"{harness.api_url}/#/meshes/default/policies/Timeout/anyone-to-orders")
        lost = page.locator("table.policy-lost tbody tr")
        expect(lost).to_have_count(1)  # on web-1 only: admin-1 has no more specific Timeout
        row = page.locator("table.policy-lost tr[data-dataplane='web-1'][data-winner='web-to-orders']")
        expect(row).to_contain_text("outbound orders")
        expect(row).to_contain_text("from service=* to service=orders")  # why it matched there
        expect(row).to_contain_text("web-to-orders (from service=web to service=orders)")  # what won, and why
        expect(page.locator("table.policy-targets tr[data-dataplane='admin-1']")).to_contain_text("outbound orders")
        page.screenshot(path=str(SCREENSHOTS / "policy-lost.png"), full_page=True)
        if docs := os.environ.get("MESHLINE_DOCS_SCREENSHOTS"):  # as test_pages.shot: docs/dashboard.md's image
            page.screenshot(path=str(Path(docs) / "dashboard-policy-lost.png"), full_page=True)
        row.locator("a[data-link='policy']").click()  # to the winner: it lost nowhere
        expect(page.locator("#page-title")).to_have_text("Timeout web-to-orders")
        expect(page.locator("table.policy-lost")).to_contain_text("Nowhere")
        expect(page.locator("table.policy-targets tr[data-dataplane='web-1']")).to_contain_text("outbound orders")

        page.goto(f"{harness.api_url}/#/meshes/default/services/orders")
        # each caller's Timeout on its outbound section to orders, on that caller's sidecar only
        winner = page.locator("table.policies-applied tr[data-policy='Timeout/web-to-orders']")
        expect(winner).to_contain_text("web-1")
        expect(winner).not_to_contain_text("admin-1")
        other = page.locator("table.policies-applied tr[data-policy='Timeout/anyone-to-orders']")
        expect(other).to_contain_text("admin-1")
        expect(other).not_to_contain_text("web-1")
        expect(other).to_contain_text("its callers' sidecars")
        assert browser.errors == []
