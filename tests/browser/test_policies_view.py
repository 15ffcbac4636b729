"""Issue 11, item 14, in a real browser: the policies page shows each selector once (its
FaultInjection section had DESTINATIONS twice, TrafficPermission its selectors again), and a
dataplane's page says which of two matching permissions decides."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import expect

from meshline.testing.mesh import MeshHarness
from tests.browser.conftest import SCREENSHOTS, Browser

pytestmark = pytest.mark.e2e

POLICIES = """
kind: FaultInjection
mesh: default
name: orders-chaos
spec:
  destinations: [{match: {service: orders}}]
  conf: {faults: [{abort: {percentage: 5, httpStatus: 503}}]}
---
kind: TrafficPermission
mesh: default
name: deny-all-to-orders
spec:
  sources: [{match: {service: '*'}}]
  destinations: [{match: {service: orders}}]
  action: deny
---
kind: TrafficPermission
mesh: default
name: web-to-orders
spec:
  sources: [{match: {service: web}}]
  destinations: [{match: {service: orders}}]
  action: allow
"""


def test_each_selector_shows_once_and_the_deciding_permission_is_named(tmp_path: Path, browser: Browser) -> None:
    with MeshHarness(tmp_path / "mesh", mtls="strict") as harness:
        harness.api.put({"kind": "Dataplane", "mesh": "default", "name": "orders-1", "spec": {
            "address": "127.0.0.1", "inbound": [{"port": 1, "servicePort": 2,
                                                 "tags": {"service": "orders", "protocol": "http"}}]}})
        harness.apply(POLICIES)
        page = browser.page()
        page.goto(f"{harness.api_url}/#/meshes/default/policies")
        for plural, kind_columns in (("faultinjections", ["Faults"]), ("trafficpermissions", [])):
            section = page.locator(f"section.policy-kind[aria-labelledby='kind-{plural}']")
            expect(section.locator("tbody tr").first).to_be_visible()
            headers = section.locator("thead th").all_text_contents()
            assert headers[:3] == ["Name", "Sources", "Destinations"], headers
            assert len(headers) == len({h.lower() for h in headers}), headers  # no column twice
            assert all(c in headers for c in kind_columns), headers
        page.screenshot(path=str(SCREENSHOTS / "policies-view.png"), full_page=True)

        page.goto(f"{harness.api_url}/#/meshes/default/dataplanes/orders-1")
        why = page.locator("table.policies-applied tr[data-policy='TrafficPermission/deny-all-to-orders'] td").last
        expect(why).to_contain_text("for web: web-to-orders (allow) decides instead")
        assert browser.errors == []
