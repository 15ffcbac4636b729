"""docs/learn-and-replay.md run as written, block after block, against the demo's own apps
(meshline.demo.app: web -> orders v1, v2 -> inventory) behind real sidecars, in a strict mesh
with the demo's permissions and authentication on, as `meshline up` runs it. Only ports are
substituted (the web app's, which the doc calls localhost:8080, and the replayer's and webhook's)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from meshline.testing.mesh import MeshHarness, wait_until
from meshline.testing.servers import free_port

pytestmark = pytest.mark.e2e

DOC = Path(__file__).parents[2] / "docs" / "learn-and-replay.md"
DEMO_PERMISSIONS = Path(__file__).parents[2] / "src" / "meshline" / "demo" / "resources.yaml"


def blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", DOC.read_text(), re.S)


class Demo:
    def __init__(self, h: MeshHarness, tmp: Path) -> None:
        self.h, self.tmp = h, tmp
        self.procs: list[subprocess.Popen[bytes]] = []
        self.ports: dict[str, int] = {}
        self.web_port = free_port()

    def app(self, role: str, version: str, port: int, upstream: tuple[str, int] | None) -> None:
        env = {**os.environ}
        if upstream is not None:
            env[f"MESHLINE_OUTBOUND_{upstream[0].upper()}"] = f"127.0.0.1:{upstream[1]}"
        log = open(self.tmp / f"{role}-{version}.log", "wb")  # noqa: SIM115 (kept open for the process)
        self.procs.append(subprocess.Popen([sys.executable, "-m", "meshline.demo.app", "--role", role,
                                            "--version", version, "--port", str(port)], env=env, stdout=log,
                                           stderr=subprocess.STDOUT))

    def start(self) -> None:
        h = self.h
        inv, o1, o2 = free_port(), free_port(), free_port()
        up1, up2, web_up = free_port(), free_port(), free_port()
        self.app("inventory", "v1", inv, None)
        self.app("orders", "v1", o1, ("inventory", up1))
        self.app("orders", "v2", o2, ("inventory", up2))
        self.app("web", "v1", self.web_port, ("orders", web_up))
        h.sidecar("inventory", inv, tags={"version": "v1"}, name="inventory-1")
        h.sidecar("orders", o1, tags={"version": "v1"}, upstreams={"inventory": up1}, name="orders-v1")
        h.sidecar("orders", o2, tags={"version": "v2"}, upstreams={"inventory": up2}, name="orders-v2")
        h.sidecar("web", self.web_port, tags={"version": "v1"}, upstreams={"orders": web_up}, name="web-1")
        url = f"http://127.0.0.1:{self.web_port}/"
        wait_until(lambda: httpx.get(url, timeout=5).json().get("upstreamStatus") == 200, 30,
                   what="web -> orders -> inventory")

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.wait(10)


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    with MeshHarness(tmp_path / "mesh", mtls="strict", auth=True) as h:
        h.apply(DEMO_PERMISSIONS.read_text())
        d = Demo(h, tmp_path)
        try:
            d.start()
            yield d
        finally:
            d.stop()


def run(d: Demo, script: str, code: int = 0) -> str:
    """The block's output; ``code``: its exit code (1: a replay that found a difference, by design)."""
    env = {**os.environ, "MESHLINE_API": d.h.api_url, "MESHLINE_TOKEN": d.h.admin_token() or "",
           "MESHLINE_DATA_DIR": str(d.tmp / "data"), "MESHLINE_CONFIG": str(d.tmp / "cli.yaml"),
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    script = script.replace("localhost:8080", f"localhost:{d.web_port}")
    for fixed in ("18990", "18998", "18999"):  # the doc's own ports for the replayer and the webhook
        script = script.replace(fixed, str(d.ports.setdefault(fixed, free_port())))
    done = subprocess.run(["bash", "-eo", "pipefail", "-c", script], capture_output=True, text=True, env=env,
                          cwd=d.tmp, timeout=120)
    assert done.returncode == code, f"{script}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    return done.stdout + done.stderr


def test_the_walkthrough_runs_as_written(demo: Demo) -> None:
    b = blocks()
    assert len(b) == 12
    run(demo, b[0])  # observe
    run(demo, b[1])  # traffic
    suggested = run(demo, b[2])
    assert "name: learned-web-to-orders" in suggested and "{prefix: /items/}" in suggested
    run(demo, b[3])  # dry-run applied
    report = run(demo, b[4])
    assert "200 200 200 200 200" in report
    assert re.search(r"dry-run\s+learned-deny-unobserved\s+web\s+orders\s+5\s+GET /admin/users x5", report), report
    enforced = run(demo, b[5])
    assert "403 RBAC: access denied by TrafficPermission learned-deny-unobserved" in enforced
    refused = run(demo, b[6])
    assert re.search(r"enforced\s+learned-deny-unobserved\s+web\s+orders\s+1\s+GET /debug x1", refused), refused
    assert "--only 'web->orders' | meshline apply -f -" in refused
    run(demo, b[7])  # the demo's permissions back
    recorded = run(demo, b[8])
    assert "request(s) recorded to orders-v1.har" in recorded and "no secret in the file" in recorded
    replayed = run(demo, b[9], code=1)
    assert "no difference" in replayed and "1 endpoint(s) differ: GET /items/{id}" in replayed
    assert '$.version: "v1" -> "v2"' in replayed
    through = run(demo, b[10], code=1)
    assert "spiffe://meshline.local/default/replayer" in through
    assert "422" in run(demo, b[11]).splitlines()
