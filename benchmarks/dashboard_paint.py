"""``python -m benchmarks.dashboard_paint [--loads N]``: first meaningful paint of the
dashboard's overview, in the browser tests' Chromium, on the demo's mesh.

The mesh is the demo's (``web -> orders -> inventory``, three real Envoy sidecars, mTLS strict,
token auth on, as tests/browser/test_pages.py builds it), with real traffic through both hops
so every part of the overview has data. Chromium (headless, the flags of tests/browser) then
opens the overview N times (default 10), each in a new tab of one profile: the first load is
cold (nothing cached), the rest warm (the page's files revalidated, 304).

*First meaningful paint* is the moment the overview shows the mesh: the three dataplanes
in sync in their table, the ``web -> orders`` arrow of the graph and the ``orders`` row of
the services table, all in the document. A MutationObserver installed before the page's own
scripts notes ``performance.now()`` (milliseconds since navigation started) at the first
animation frame after they are all there, so the figure includes the frame that paints them.
Also reported: the browser's first contentful paint (the empty page frame) and
DOMContentLoaded. Medians of the warm loads, and the cold one alone.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from meshline.testing.mesh import MeshHarness, wait_until
from meshline.testing.servers import HttpTestServer

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage"]  # tests/browser/conftest.py

# Runs before the page's scripts (CDP injection; the page's CSP does not apply to it).
MARK = """
(() => {
  const ready = () => document.querySelectorAll("table.dataplanes tbody tr[data-state='in-sync']").length >= 3
    && document.querySelector("svg.graph g.edge[data-source='web'][data-destination='orders']")
    && document.querySelector("table.services tr[data-service='orders']");
  const observer = new MutationObserver(() => {
    if (window.__meaningful === undefined && ready()) {
      window.__meaningful = null;
      observer.disconnect();
      requestAnimationFrame(() => { window.__meaningful = performance.now(); });
    }
  });
  observer.observe(document, { childList: true, subtree: true, attributes: true });
})();
"""


def load(context: Any, url: str) -> dict[str, float]:
    page = context.new_page()
    page.set_viewport_size({"width": 1280, "height": 900})
    try:
        page.goto(url)
        # polled from outside (the page's CSP forbids the eval wait_for_function uses); the
        # figure is the page's own timestamp, so the polling does not change it
        deadline = time.monotonic() + 30
        while not isinstance(page.evaluate("window.__meaningful"), (int, float)):
            if time.monotonic() > deadline:
                raise TimeoutError("the overview never showed the mesh")
            page.wait_for_timeout(20)
        return {
            "meaningful": page.evaluate("window.__meaningful"),
            "fcp": page.evaluate("(performance.getEntriesByName('first-contentful-paint')[0] || {}).startTime || 0"),
            "dcl": page.evaluate("performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd"),
        }
    finally:
        page.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loads", type=int, default=10)
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        raise SystemExit("chromium is not installed (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory() as tmp, HttpTestServer("orders-1") as orders, \
            HttpTestServer("inventory-1") as inventory:
        spec = {"mtls": {"mode": "strict"}, "defaultPermission": "allow"}
        with MeshHarness(Path(tmp) / "mesh", mtls="strict", auth=True, mesh_spec=spec) as harness:
            sidecars = {
                "inventory": harness.sidecar("inventory", inventory.port, tags={"version": "v1"}),
                "orders": harness.sidecar("orders", orders.port, tags={"version": "v2"}, upstreams=["inventory"]),
                "web": harness.sidecar("web", 1, tags={"version": "v1"}, upstreams=["orders"]),
            }
            harness.wait_in_sync()
            for src, dst in (("web", "orders"), ("orders", "inventory")):
                def sent(s: str = src, d: str = dst) -> bool:
                    with httpx.Client(base_url=sidecars[s].url(d), timeout=10) as c:
                        return all(c.get(f"/paint/{i}").status_code == 200 for i in range(20))
                wait_until(sent, 30, 0.2, f"{src} -> {dst}")
            admin = harness.admin_token() or ""
            headers = {"Authorization": f"Bearer {admin}"}

            def counted() -> bool:
                edges = httpx.get(f"{harness.api_url}/api/v1/meshes/default/stats", headers=headers).json()["edges"]
                return {(e["source"], e["destination"]) for e in edges} >= {("web", "orders"), ("orders", "inventory")}

            wait_until(counted, 30, 0.2, "the traffic counted")
            url = f"{harness.api_url}/#token={admin}"
            with sync_playwright() as p:
                context = p.chromium.launch_persistent_context(str(Path(tmp) / "profile"), executable_path=binary,
                                                               headless=True, args=FLAGS)
                context.add_init_script(MARK)
                try:
                    runs = []
                    for _ in range(args.loads):
                        runs.append(load(context, url))
                        time.sleep(0.2)  # let the closed tab's refresh loop wind down
                finally:
                    context.close()
    cold, warm = runs[0], runs[1:] or runs
    print(f"overview, demo mesh (3 sidecars), {args.loads} loads; ms since navigation start")
    for key, label in (("meaningful", "first meaningful paint"), ("fcp", "first contentful paint"),
                       ("dcl", "DOMContentLoaded")):
        values = [r[key] for r in warm]
        print(f"  {label:24s} cold {cold[key]:7.1f}   warm median {statistics.median(values):7.1f}"
              f"  (min {min(values):.1f}, max {max(values):.1f})")


if __name__ == "__main__":
    main()
