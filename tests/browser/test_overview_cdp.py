"""The dashboard's overview, graph and tap in a real browser (headless Chromium, driven over
the DevTools protocol directly; the pages of test_pages.py use Playwright) against a real mesh: real Envoys, real traffic, a real NACK. The page must show what the
API knows: dataplanes and their xDS states, the service graph's edges with their health,
the policies inspect finds (on the dataplane's page), failures in a live tap with their explanation; and with
authentication on, nothing without a token.

Screenshots of each step are left in the test's tmp dir (see the log for the path)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest

from meshline.testing.mesh import MeshHarness, Sidecar, wait_until
from meshline.testing.nack import breakable_control_plane, trigger_dataplane
from meshline.testing.servers import HttpTestServer

pytestmark = pytest.mark.e2e

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--no-default-browser-check", "--disable-dev-shm-usage",
    "--remote-debugging-port=0", "--remote-allow-origins=*", "about:blank",
]


def chromium_binary() -> str:
    """The browser, or fail (CI installs it: scripts/test) / skip (a developer's machine)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    reason = "chromium is not installed (Debian: apt-get install chromium; scripts/test installs it as root)"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


class Browser:
    """Just enough of the Chrome DevTools protocol: open a page, evaluate JavaScript, wait for
    a condition, take a screenshot; console errors and uncaught exceptions are collected."""

    def __init__(self, binary: str, profile: Path) -> None:
        self.binary = binary
        self.profile = profile
        self.proc: subprocess.Popen[bytes] | None = None
        self.session: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.errors: list[str] = []
        self._ids = 0
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.profile.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [self.binary, f"--user-data-dir={self.profile}", *CHROMIUM_FLAGS],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        active = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (active.exists() and active.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chromium did not start (exit {self.proc.poll()})")
            await asyncio.sleep(0.05)
        port = int(active.read_text().split()[0])
        self.session = aiohttp.ClientSession()
        async with self.session.get(f"http://127.0.0.1:{port}/json/list") as resp:
            targets = await resp.json()
        page = next(t for t in targets if t["type"] == "page")
        self.ws = await self.session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=64 * 1024 * 1024)
        self._reader = asyncio.create_task(self._read())
        await self.send("Runtime.enable")
        await self.send("Log.enable")
        await self.send("Page.enable")

    async def _read(self) -> None:
        assert self.ws is not None
        async for msg in self.ws:
            data = json.loads(msg.data)
            if "id" in data:
                fut = self._waiting.pop(data["id"], None)
                if fut is not None and not fut.done():
                    fut.set_result(data)
            elif data.get("method") == "Runtime.exceptionThrown":
                details = data["params"]["exceptionDetails"]
                self.errors.append(f"exception: {details.get('exception', {}).get('description') or details['text']}")
            elif data.get("method") == "Runtime.consoleAPICalled" and data["params"]["type"] == "error":
                self.errors.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in data["params"]["args"]))
            elif data.get("method") == "Log.entryAdded" and data["params"]["entry"]["level"] == "error":
                entry = data["params"]["entry"]
                self.errors.append(f"{entry['source']}: {entry['text']} {entry.get('url', '')}")

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        assert self.ws is not None
        self._ids += 1
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[self._ids] = fut
        await self.ws.send_str(json.dumps({"id": self._ids, "method": method, "params": params}))
        reply = await asyncio.wait_for(fut, 30)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return dict(reply.get("result", {}))

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r} failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 20, what: str = "") -> Any:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            last = await self.evaluate(expression)
            if last:
                return last
            await asyncio.sleep(0.1)
        body = await self.evaluate("document.body.innerText")
        raise TimeoutError(f"timed out waiting for {what or expression} (last value {last!r}); page text:\n{body}")

    async def goto(self, url: str, width: int = 1280, height: int = 900) -> None:
        await self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        await self.send("Page.navigate", url=url)
        await self.wait_for("document.readyState === 'complete'", what="the page to load")

    async def screenshot(self, path: Path) -> Path:
        shot = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    async def stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self.ws is not None:
            await self.ws.close()
        if self.session is not None:
            await self.session.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Browser]:
    b = Browser(chromium_binary(), tmp_path / "chromium-profile")
    await b.start()
    try:
        yield b
    finally:
        await b.stop()


# -- a NACK on demand (as in test_core_mesh): a route regex RE2 cannot compile ----------------
TIMEOUT_POLICY = """
kind: Timeout
mesh: default
name: web-to-orders
spec:
  sources: [{match: {service: web}}]
  destinations: [{match: {service: orders}}]
  conf: {http: {requestTimeout: 5s}}
"""

TRIGGER_NACK = trigger_dataplane("orders")


@pytest.fixture(scope="module")
def apps() -> Iterator[tuple[HttpTestServer, HttpTestServer]]:
    with HttpTestServer("orders-1") as orders, HttpTestServer("inventory-1") as inventory:
        yield orders, inventory


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, apps: tuple[HttpTestServer, HttpTestServer]
         ) -> Iterator[tuple[MeshHarness, dict[str, Sidecar]]]:
    orders, inventory = apps
    with MeshHarness(tmp_path_factory.mktemp("dashboard"), build=breakable_control_plane) as harness:
        harness.apply(TIMEOUT_POLICY)
        sidecars = {
            "inventory": harness.sidecar("inventory", inventory.port, tags={"version": "v1", "zone": "east"}),
            "orders": harness.sidecar("orders", orders.port, tags={"version": "v2", "zone": "east"},
                                      upstreams=["inventory"]),
            "web": harness.sidecar("web", 1, tags={"version": "v1", "zone": "west"}, upstreams=["orders"]),
        }
        harness.wait_in_sync()
        yield harness, sidecars


def _send(url: str, paths: list[str]) -> list[int]:
    with httpx.Client(base_url=url, timeout=10) as client:
        return [client.get(p).status_code for p in paths]


def _dashboard_url(harness: MeshHarness, fragment: str = "") -> str:
    return f"{harness.api_url}/{fragment}"


EDGE = "document.querySelector('svg.graph g.edge[data-source=\"{src}\"][data-destination=\"{dst}\"]')"


async def test_overview_graph_inspect_nack_and_tap_in_a_real_browser(
    mesh: tuple[MeshHarness, dict[str, Sidecar]], apps: tuple[HttpTestServer, HttpTestServer],
    browser: Browser, tmp_path: Path,
) -> None:
    harness, sc = mesh
    _, inventory = apps
    print(f"screenshots in {tmp_path}")
    # Both paths answer first (an instance joins callers' endpoints once its agent says it is
    # ready); every status sent is kept, because the stats count them all.
    sent: dict[tuple[str, str], list[int]] = {("web", "orders"): [], ("orders", "inventory"): []}
    for (src, dst), statuses in sent.items():
        def answered(src: str = src, dst: str = dst, statuses: list[int] = statuses) -> bool:
            statuses.extend(_send(sc[src].url(dst), ["/warm-up"]))
            return statuses[-1] == 200

        await asyncio.to_thread(wait_until, answered, 15, 0.2, f"{src} -> {dst} to answer")
    # then: web -> orders all fine; orders -> inventory half failing (503s from the app)
    inventory.behaviour.fail_ratio = 0.5
    sent["web", "orders"] += await asyncio.to_thread(_send, sc["web"].url("orders"), [f"/web/{i}" for i in range(20)])
    inv = await asyncio.to_thread(_send, sc["orders"].url("inventory"), [f"/inv/{i}" for i in range(20)])
    sent["orders", "inventory"] += inv
    inventory.behaviour.fail_ratio = 0.0
    assert sent["web", "orders"][-20:] == [200] * 20
    assert 0 < inv.count(200) < 19 and inv.count(200) + inv.count(503) == 20  # below 95%: a "bad" edge
    inv_pct = f"{sent['orders', 'inventory'].count(200) / len(sent['orders', 'inventory']) * 100:.1f}%"
    web_rate = sent["web", "orders"].count(200) / len(sent["web", "orders"])

    def counted() -> dict[str, Any] | None:
        data = dict(harness.api.get("/api/v1/meshes/default/stats"))
        totals = {(e["source"], e["destination"]): e["total"] for e in data["edges"]}
        return data if all(totals.get(edge) == len(statuses) for edge, statuses in sent.items()) else None

    await asyncio.to_thread(wait_until, counted, 20, 0.1, "every request counted")

    # -- overview: dataplanes, their state, the graph ---------------------------------------
    await browser.goto(_dashboard_url(harness))
    await browser.wait_for(EDGE.format(src="orders", dst="inventory") + " !== null", what="the graph's edges")
    await browser.wait_for("[...document.querySelectorAll('table.dataplanes tbody tr')].filter("
                           "r => r.dataset.state === 'in-sync').length === 3", what="3 dataplanes in sync")
    rows = await browser.evaluate("""[...document.querySelectorAll('table.dataplanes tbody tr')].map(r => ({
        name: r.dataset.dataplane, state: r.dataset.state, badge: r.querySelector('.badge').textContent,
        cells: [...r.cells].map(c => c.textContent)}))""")
    assert {r["name"]: (r["state"], r["badge"]) for r in rows} == {
        "inventory-1": ("in-sync", "in-sync"), "orders-1": ("in-sync", "in-sync"), "web-1": ("in-sync", "in-sync")}
    orders_row = next(r["cells"] for r in rows if r["name"] == "orders-1")
    assert orders_row[1:4] == ["orders", "v2", "east"]
    assert orders_row[4] == f"127.0.0.1:{sc['orders'].inbound_port}"

    edges = await browser.evaluate("""[...document.querySelectorAll('svg.graph g.edge')].map(g => ({
        source: g.dataset.source, destination: g.dataset.destination, cls: g.getAttribute('class'),
        label: g.getAttribute('aria-label')}))""")
    assert sorted((e["source"], e["destination"]) for e in edges) == [("orders", "inventory"), ("web", "orders")]
    by_pair = {(e["source"], e["destination"]): e for e in edges}
    assert f"{web_rate * 100:.1f}% success" in by_pair["web", "orders"]["label"]
    # green from 99%, amber from 95% (a failed warm-up request counts too)
    assert ("health-good" if web_rate >= 0.99 else "health-warn" if web_rate >= 0.95 else "health-bad"
            ) in by_pair["web", "orders"]["cls"]
    bad = by_pair["orders", "inventory"]
    assert "health-bad" in bad["cls"], bad
    assert f"{inv_pct} success" in bad["label"], (bad, sent)
    assert "plaintext" in bad["label"]  # this mesh runs with mTLS disabled, and the edge says so
    labels = await browser.evaluate(
        "[...document.querySelectorAll('svg.graph g.edge-label')].map(g => g.dataset.source + '>' + g.dataset.destination"
        " + ':' + g.textContent)")
    assert any(lbl.startswith("orders>inventory:") and inv_pct in lbl for lbl in labels), labels
    # callers sit left of their callees
    xs = await browser.evaluate("Object.fromEntries([...document.querySelectorAll('svg.graph a.node')].map("
                                "a => [a.dataset.service, a.querySelector('rect').x.baseVal.value]))")
    assert xs["web"] < xs["orders"] < xs["inventory"], xs
    services = await browser.evaluate("""Object.fromEntries([...document.querySelectorAll('table.services tbody tr')]
        .map(r => [r.dataset.service, [...r.cells].map(c => c.textContent)]))""")
    assert services["inventory"][1] == "1/1" and services["inventory"][3] == inv_pct
    await browser.screenshot(tmp_path / "overview.png")

    # -- a dataplane's page: the policies that apply and why, as the API says -------------------
    await browser.evaluate("document.querySelector('[data-key=\"dp:web-1\"]').click()")
    reason = await browser.wait_for(
        "document.querySelector('#view-page tr[data-policy=\"Timeout/web-to-orders\"]')?.cells[3].textContent",
        what="the Timeout policy on web-1's page")
    assert await browser.evaluate("location.hash") == "#/meshes/default/dataplanes/web-1"
    api_view = harness.api.get("/api/v1/meshes/default/dataplanes/web-1/inspect?config=0")
    expected = next(p for p in api_view["policies"] if p["kind"] == "Timeout")
    assert reason == expected["reason"] and "service=web" in reason and "service=orders" in reason
    await browser.screenshot(tmp_path / "inspect.png")
    await browser.evaluate("history.back()")
    await browser.wait_for("!document.querySelector('#view-overview').hidden", what="the overview again")

    # -- a rejected configuration: the state and Envoy's own words ---------------------------
    harness.apply(TRIGGER_NACK)
    try:
        nack = await browser.wait_for(
            "(r => r && r.dataset.state === 'rejected' && r.querySelector('.nack')?.textContent)"
            "(document.querySelector('tr[data-dataplane=\"web-1\"]'))", what="web-1 shown as rejected")
        assert "(unclosed" in nack  # Envoy names the regex it refused
        assert await browser.evaluate(
            "document.querySelector('tr[data-dataplane=\"trigger-nack\"]').dataset.state") == "offline"
        await browser.screenshot(tmp_path / "rejected.png")
    finally:
        harness.api.request("DELETE", "/api/v1/meshes/default/dataplanes/trigger-nack")
    await browser.wait_for("document.querySelector('tr[data-dataplane=\"web-1\"]')?.dataset.state === 'in-sync'",
                           what="web-1 back in sync")

    # -- live tap: failures with their explanation ------------------------------------------
    await browser.goto(_dashboard_url(harness, "#tap?service=inventory"))
    await browser.wait_for("document.querySelector('#view-tap').dataset.tap === 'live'", what="the tap to start")
    assert await browser.evaluate("document.querySelector('#tap-service').value") == "inventory"
    inventory.behaviour.fail_ratio = 1.0
    try:
        tapped = await asyncio.to_thread(_send, sc["orders"].url("inventory"), [f"/tapped/{i}" for i in range(6)])
    finally:
        inventory.behaviour.fail_ratio = 0.0
    assert tapped == [503] * 6
    rows = await browser.wait_for("""(rows => rows.length >= 6 && rows)([...document.querySelectorAll('table.tap tbody tr')]
        .filter(r => r.cells[2].textContent.includes('/tapped/'))
        .map(r => ({cls: r.className, path: r.cells[2].textContent, why: r.querySelector('.explanation')?.textContent})))""",
                                  what="the 6 failed requests in the tap")
    assert sorted(r["path"] for r in rows) == sorted(f"GET /tapped/{i}" for i in range(6))
    assert all(r["cls"] == "failed" and r["why"] == "inventory (inventory-1) answered 503" for r in rows), rows
    # both halves of one of them, from the requests endpoint: the caller's and the callee's sidecar
    await browser.evaluate("""[...document.querySelectorAll('table.tap tbody tr')]
        .find(r => r.cells[2].textContent === 'GET /tapped/0').querySelector('button').click()""")
    halves = await browser.wait_for("""(h => h.length === 2 && h)([...[...document.querySelectorAll('table.tap tbody tr')]
        .find(r => r.cells[2].textContent === 'GET /tapped/0').querySelectorAll('.halves li')].map(li => li.textContent))""",
                                    what="both halves of /tapped/0")
    assert halves[0].startswith("outbound at orders-1: 503") and halves[1].startswith("inbound at inventory-1: 503"), halves
    await browser.screenshot(tmp_path / "tap.png")

    # -- narrow screens: the graph turns vertical and the page does not scroll sideways --------
    await browser.goto(_dashboard_url(harness), width=400, height=1600)
    await browser.wait_for(EDGE.format(src="web", dst="orders") + " !== null", what="the narrow graph")
    ys = await browser.evaluate("Object.fromEntries([...document.querySelectorAll('svg.graph a.node')].map("
                                "a => [a.dataset.service, a.querySelector('rect').y.baseVal.value]))")
    assert ys["web"] < ys["orders"] < ys["inventory"], ys
    assert await browser.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")
    await browser.screenshot(tmp_path / "narrow.png")
    # no script error, no CSP violation, no failed load along the way
    assert browser.errors == []


async def test_with_authentication_the_page_needs_a_token_and_hides_it(tmp_path: Path, browser: Browser) -> None:
    with MeshHarness(tmp_path / "mesh", auth=True) as harness:
        harness.apply("""
kind: Dataplane
mesh: default
name: payments-1
spec: {address: 127.0.0.1, inbound: [{port: 18080, servicePort: 8080, tags: {service: payments, version: v3}}]}
""")
        token = harness.admin_token()
        assert token
        # the page loads without a token, but shows no data: it asks for one
        await browser.goto(_dashboard_url(harness))
        await browser.wait_for("!document.querySelector('#signin').hidden", what="the sign-in form")
        assert await browser.evaluate("document.querySelectorAll('tr[data-dataplane]').length") == 0
        # a wrong token is refused, and the page says so
        await browser.evaluate("document.querySelector('#token').value = 'not-a-token';"
                               "document.querySelector('#signin-form').requestSubmit()")
        refused = await browser.wait_for("document.querySelector('#signin-reason').textContent", what="the refusal")
        assert "refused" in refused
        await browser.screenshot(tmp_path / "signin.png")
        # the address's token signs in; it leaves the address bar at once
        await browser.goto(_dashboard_url(harness, f"#token={token}"))
        state = await browser.wait_for(
            "document.querySelector('tr[data-dataplane=\"payments-1\"]')?.dataset.state", what="the dataplane row")
        assert state == "offline"  # registered by hand: no sidecar connected
        assert await browser.evaluate("location.href") == _dashboard_url(harness)
        assert await browser.evaluate("sessionStorage.getItem('meshline.token')") == token
        await browser.screenshot(tmp_path / "signed-in.png")
    assert [e for e in browser.errors if "401" not in e] == []  # the refused calls, nothing else
