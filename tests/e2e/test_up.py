"""`meshline up` smoke test: it starts, serves a request through the demo, and stops with nothing left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from meshline.testing.mesh import wait_until
from meshline.testing.servers import free_port, free_ports


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_up_serves_the_demo_and_stops_cleanly(tmp_path: Path) -> None:
    web_port = free_ports(5)  # the gateway, then the orders v1, orders v2, inventory and web apps
    outbound_base = free_ports(3)
    cmd = [sys.executable, "-m", "meshline", "up", "--port", str(web_port), "--outbound-base", str(outbound_base),
           "--data-dir", str(tmp_path / "data"), "--api-address", f"127.0.0.1:{free_port()}",
           "--xds-address", f"127.0.0.1:{free_port()}"]
    log = tmp_path / "up.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: "Meshline is up" in log.read_text() or proc.poll() is not None, 90,
                   what="meshline up to be ready")
        assert proc.poll() is None, log.read_text()
        body = httpx.get(f"http://127.0.0.1:{web_port}/", timeout=5).json()
        assert body["service"] == "web"
        assert body["upstream"]["service"] == "orders"
        assert body["upstream"]["upstream"]["service"] == "inventory"
        # the request entered through the ingress gateway: web saw edge's SPIFFE identity, orders web's
        assert body["caller"].endswith("/default/edge")
        assert body["upstream"]["caller"].endswith("/default/web")
        running = _descendants(proc.pid)
        assert len([p for p in running if _alive(p)]) >= 10  # 4 agents + a gateway + 5 Envoys (+ apps)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(40)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    assert proc.returncode == 0, log.read_text()[-2000:]
    time.sleep(0.5)
    leftovers = [p for p in running if _alive(p)]
    assert leftovers == [], f"processes left behind: {leftovers}"
    assert "Stopped." in log.read_text()

