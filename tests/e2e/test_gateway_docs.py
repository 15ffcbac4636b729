"""docs/gateways.md as written: the demo's gateway answers the first request, and the "Expose
web over HTTPS" block, pasted into a shell next to `meshline up`, serves web over HTTPS by SNI
and redirects plain HTTP (only the ports are the test's own)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from meshline.testing.mesh import wait_until
from meshline.testing.servers import free_port, free_ports

DOC = Path(__file__).resolve().parents[2] / "docs" / "gateways.md"


def sh_block(after: str) -> str:
    text = DOC.read_text()
    block = re.search(r"```sh\n(.*?)```", text[text.index(after):], re.S)
    assert block is not None
    return block.group(1)


def test_the_https_snippet_runs_as_written_against_up(tmp_path: Path) -> None:
    web_port = free_ports(5)
    http_port, https_port = free_port(), free_port()
    env = {**os.environ, "MESHLINE_CONFIG": str(tmp_path / "config.yaml")}
    cmd = [sys.executable, "-m", "meshline", "up", "--port", str(web_port), "--outbound-base", str(free_ports(3)),
           "--data-dir", str(tmp_path / "data"), "--api-address", f"127.0.0.1:{free_port()}",
           "--xds-address", f"127.0.0.1:{free_port()}"]  # fmt: skip
    log = tmp_path / "up.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        wait_until(lambda: "Meshline is up" in log.read_text() or proc.poll() is not None, 90, what="meshline up")
        assert proc.poll() is None, log.read_text()
        # the demo's first request enters through its gateway
        body = httpx.get(f"http://127.0.0.1:{web_port}/", timeout=5).json()
        assert body["service"] == "web" and body["caller"].endswith("/default/edge"), body
        shell_env = {**env, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
        inspect = subprocess.run(["meshline", "inspect", "dataplane", "edge-1"], capture_output=True, text=True,
                                 env=shell_env, timeout=60)  # fmt: skip
        assert inspect.returncode == 0 and "MeshGatewayRoute" in inspect.stdout, inspect.stdout + inspect.stderr
        script = sh_block("## Expose web over HTTPS").replace("9443", str(https_port)).replace("9080", str(http_port))
        ran = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True,
                             env=shell_env, cwd=tmp_path, timeout=120)  # fmt: skip
        assert ran.returncode == 0, ran.stdout + ran.stderr + (tmp_path / "gateway.log").read_text()
        answer, redirect = ran.stdout.strip().splitlines()[-2:]
        assert '"service": "web"' in answer or '"service":"web"' in answer, ran.stdout
        assert redirect == f"301 https://web.localhost:{https_port}/", ran.stdout
        # the same certificate kept by the control plane instead (the block after it, same directory)
        stored = subprocess.run(["bash", "-euo", "pipefail", "-c", sh_block("### Certificates kept by the control plane")],
                                capture_output=True, text=True, env=shell_env, cwd=tmp_path, timeout=120)  # fmt: skip
        assert stored.returncode == 0, stored.stdout + stored.stderr
        assert "web-localhost" in stored.stdout.splitlines()[-1], stored.stdout
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
