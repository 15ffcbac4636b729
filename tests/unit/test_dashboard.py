"""The dashboard's files through a real control plane with authentication on: served without a
token, with headers that stop framing, sniffing and foreign scripts, while the API they call
still needs one; `meshline dashboard` prints the signed-in address. No browser here (see
tests/browser/)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import httpx
import pytest
from click.testing import CliRunner

from meshline.cli.main import cli
from meshline.controlplane.settings import Settings
from meshline.dashboard import STATIC_DIR, dashboard_url
from meshline.testing.mesh import ControlPlaneThread
from meshline.testing.servers import free_port


class Running:
    def __init__(self, thread: ControlPlaneThread, data_dir: Path) -> None:
        self.thread = thread
        self.data_dir = data_dir
        self.url = thread.cp.api_url
        self.admin = (data_dir / "admin.token").read_text().strip()
        self.http = httpx.Client(base_url=self.url, timeout=10)


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    data_dir = tmp_path_factory.mktemp("dashboard-cp")
    settings = Settings(
        data_dir=data_dir,
        store_url=f"sqlite:///{data_dir / 'meshline.db'}",
        api_address=f"127.0.0.1:{free_port()}",
        xds_address=f"127.0.0.1:{free_port()}",
        auth=True,
        debounce=0.001,
    )
    thread = ControlPlaneThread(settings)
    thread.start()
    running = Running(thread, data_dir)
    try:
        yield running
    finally:
        running.http.close()
        thread.stop()


def static_files() -> list[str]:
    return sorted(p.name for p in STATIC_DIR.iterdir() if p.suffix in (".js", ".css", ".svg"))


def test_the_page_and_its_files_need_no_token_and_carry_the_security_headers(cp: Running) -> None:
    for path, kind in [("/", "text/html"), ("/dashboard/", "text/html"), *(
            (f"/dashboard/{name}", {"js": "text/javascript", "css": "text/css", "svg": "image/svg+xml"}[name.rsplit(".", 1)[1]])
            for name in static_files())]:
        r = cp.http.get(path)
        assert r.status_code == 200, path
        assert r.headers["content-type"].startswith(kind), (path, r.headers["content-type"])
        csp = r.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["referrer-policy"] == "no-referrer"
    index = cp.http.get("/").text
    assert "<title>Meshline</title>" in index and 'src="/dashboard/app.js"' in index


def test_the_api_the_page_calls_still_needs_a_token(cp: Running) -> None:
    for path in ["/api/v1/meshes", "/api/v1/meshes/default/dataplanes", "/api/v1/meshes/default/stats",
                 "/api/v1/kinds"]:
        assert cp.http.get(path).status_code == 401, path
        assert cp.http.get(path, headers={"Authorization": f"Bearer {cp.admin}"}).status_code == 200, path


def test_only_files_of_the_dashboard_folder_are_served(cp: Running) -> None:
    for path in ["/dashboard/routes.py", "/dashboard/__init__.py", "/dashboard/missing.js", "/dashboard/..%2Froutes.py",
                 "/dashboard/%2e%2e%2f__init__.py", "/dashboard/.hidden.js", "/dashboard/../api/v1/meshes"]:
        r = cp.http.get(path)
        assert r.status_code in (401, 404), (path, r.status_code)
        assert "import" not in r.text and "def " not in r.text, path


def test_a_cached_file_is_revalidated_not_sent_again(cp: Running) -> None:
    first = cp.http.get("/dashboard/app.js")
    again = cp.http.get("/dashboard/app.js", headers={"If-None-Match": first.headers["etag"]})
    assert first.headers["cache-control"] == "no-cache"
    assert again.status_code == 304 and again.content == b""


def test_the_page_has_no_inline_code_and_every_file_it_loads_exists() -> None:
    index = (STATIC_DIR / "index.html").read_text()
    assert re.search(r"<script(?![^>]*\bsrc=)", index) is None, "inline <script>: the CSP would block it"
    assert re.search(r"\sstyle=|\son[a-z]+=", index) is None, "inline style/handler: the CSP would block it"
    referenced = set(re.findall(r'(?:src|href)="/dashboard/([^"]+)"', index))
    for js in STATIC_DIR.glob("*.js"):
        text = js.read_text()
        code = re.sub(r"^\s*//.*$", "", text, flags=re.M)  # comments may name what the code avoids
        assert not re.search(r"\.(innerHTML|outerHTML)\s*=|insertAdjacentHTML|\beval\(|new Function", code), js.name
        referenced |= set(re.findall(r'from "\./([^"]+)"', text))
    assert referenced, "no files referenced"
    assert {name for name in referenced if not (STATIC_DIR / name).is_file()} == set()
    assert referenced >= set(static_files())  # nothing shipped unused


def test_dashboard_command_prints_the_address_with_the_local_admin_token(cp: Running,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MESHLINE_TOKEN", raising=False)
    monkeypatch.delenv("MESHLINE_TOKEN_FILE", raising=False)
    monkeypatch.setenv("MESHLINE_DATA_DIR", str(cp.data_dir))
    result = CliRunner().invoke(cli, ["--api", cp.url, "dashboard"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    url = result.stdout.strip()
    assert url == dashboard_url(cp.url, cp.admin) and url.startswith(cp.url + "/#token=")
    assert unquote(url.split("#token=", 1)[1]) == cp.admin
    # without a token the address is bare and the page will ask
    bare = CliRunner().invoke(cli, ["--api", cp.url, "dashboard", "--no-token"], catch_exceptions=False)
    assert bare.exit_code == 0 and bare.stdout.strip() == cp.url + "/" and "needs a token" in bare.stderr
    refused = CliRunner().invoke(cli, ["--api", cp.url, "--token", "garbage", "dashboard"])
    assert refused.exit_code != 0 and "refused" in str(refused.exception)


def test_dashboard_command_says_how_to_start_a_missing_control_plane() -> None:
    result = CliRunner().invoke(cli, ["--api", f"http://127.0.0.1:{free_port()}", "dashboard"])
    assert result.exit_code != 0 and "meshline control-plane" in str(result.exception)


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_the_session_says_whether_the_token_may_change_resources(cp: Running) -> None:
    admin = cp.http.get("/api/v1/dashboard/session", headers=_auth(cp.admin)).json()
    assert admin["principal"]["canWrite"] is True and admin["grafana"] is None  # no MESHLINE_GRAFANA_URL here
    issued = cp.http.post("/api/v1/tokens", headers=_auth(cp.admin),
                          json={"kind": "readonly", "ttl": "1h", "description": "test"}).json()["token"]
    viewer = cp.http.get("/api/v1/dashboard/session", headers=_auth(issued)).json()
    assert viewer["principal"] == {**viewer["principal"], "readOnly": True, "canWrite": False}
    assert cp.http.get("/api/v1/dashboard/session").status_code == 401


def test_the_editor_yaml_is_read_as_the_cli_reads_it_with_the_line_of_each_field(cp: Running) -> None:
    text = "kind: Timeout\nmesh: default\nname: t\nspec:\n  conf:\n    http:\n      requestTimeut: 5s\n---\n"
    body = cp.http.post("/api/v1/dashboard/yaml", headers=_auth(cp.admin), json={"text": text}).json()
    assert body["documents"] == [{"kind": "Timeout", "mesh": "default", "name": "t",
                                  "spec": {"conf": {"http": {"requestTimeut": "5s"}}}}]
    assert body["lines"][0]["spec.conf.http.requestTimeut"] == 7 and body["lines"][0]["name"] == 3
    listed = cp.http.post("/api/v1/dashboard/yaml", headers=_auth(cp.admin),
                          json={"text": "a: [x, {b: 1}]\n"}).json()
    assert listed["lines"][0]["a[1].b"] == 1
    for bad, where in [("kind: A\nkind: B\n", "line 2"), ("a: [1,\n", "line 2"), ("x: *nope\n", "line 1")]:
        r = cp.http.post("/api/v1/dashboard/yaml", headers=_auth(cp.admin), json={"text": bad})
        assert r.status_code == 422 and r.json()["problems"][0]["path"] == where, (bad, r.text)
    assert cp.http.post("/api/v1/dashboard/yaml", json={"text": "a: 1"}).status_code == 401


def test_a_listing_from_the_read_model_is_byte_for_byte_the_stores(cp: Running) -> None:
    """The dashboard lists every dataplane every 2 s: answered from the read model (and each
    resource's JSON remembered), it must be exactly what listing the store gives."""
    from meshline.api.server import Api

    auth = {"Authorization": f"Bearer {cp.admin}"}
    docs = [{"kind": "Dataplane", "mesh": "default", "name": f"lister-{n}", "labels": {"team": "a"}, "spec": {
        "address": f"127.0.0.{n}", "inbound": [{"port": 21000 + n, "servicePort": 31000 + n,
                                                "tags": {"service": f"lister-{n % 2}", "version": "v1"}}],
        "outbound": [{"port": 41000, "service": "lister-0"}]}} for n in (3, 1, 2)]
    docs.append({"kind": "Timeout", "mesh": "default", "name": "lister-slow",
                 "spec": {"destinations": [{"match": {"service": "lister-0"}}], "conf": {"http": {"requestTimeout": "5s"}}}})
    assert cp.http.post("/api/v1/apply", json={"resources": docs}, headers=auth).status_code == 200
    ctx = cp.thread.cp.ctx

    async def caught_up() -> bool:
        return ctx.reconciler.model.revision >= await ctx.store.revision()

    for _ in range(500):  # the watch delivers the write to the model soon after it commits
        if cp.thread.call(caught_up):
            break
        cp.thread.call(lambda: asyncio.sleep(0.01))
    else:
        pytest.fail("the read model never reached the store's revision")
    for plural, kind in (("dataplanes", "Dataplane"), ("timeouts", "Timeout")):
        for _ in range(2):  # the second answer comes from the remembered JSON
            got = cp.http.get(f"/api/v1/meshes/default/{plural}", headers=auth)
            assert got.status_code == 200 and got.headers["Content-Type"] == "application/json; charset=utf-8"

            async def from_store(kind: str = kind) -> bytes:
                items = await Api(ctx)._items(await ctx.store.list(kind, "default"))
                return json.dumps({"items": items}, separators=(",", ":")).encode()

            assert got.content == cp.thread.call(from_store)
        names = [i["name"] for i in got.json()["items"]]
        assert names == sorted(names) and len(names) >= (3 if kind == "Dataplane" else 1)
    missing = cp.http.get("/api/v1/meshes/nowhere/dataplanes", headers=auth)
    assert missing.status_code == 404 and "nowhere" in missing.text
