"""docs/observability.md's fault-and-timeout snippet, pasted as written into a shell while
`meshline up` runs its demo (only the demo's ports are the test's own): the tap shows the
timeouts with the Timeout that caused them (issue 11, item 12: pasteable snippets are run).
As first written (`meshline tap ... --max 2 &` then the requests) it hung: the requests were
done before the tap was on."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from meshline.testing.mesh import wait_until
from meshline.testing.servers import free_port, free_ports

DOC = Path(__file__).parents[2] / "docs" / "observability.md"


def sh_block(after: str) -> str:
    text = DOC.read_text()
    block = re.search(r"```sh\n(.*?)```", text[text.index(after):], re.S)
    assert block is not None
    return block.group(1)


def test_the_timeout_snippet_runs_as_written_against_up(tmp_path: Path) -> None:
    web_port = free_ports(5)
    api = f"127.0.0.1:{free_port()}"
    cmd = [sys.executable, "-m", "meshline", "up", "--port", str(web_port), "--outbound-base", str(free_ports(3)),
           "--data-dir", str(tmp_path / "data"), "--api-address", api, "--xds-address", f"127.0.0.1:{free_port()}"]
    env = {**os.environ, "MESHLINE_CONFIG": str(tmp_path / "config.yaml")}
    log = tmp_path / "up.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        wait_until(lambda: "Meshline is up" in log.read_text() or proc.poll() is not None, 90, what="meshline up")
        assert proc.poll() is None, log.read_text()
        script = sh_block("A timeout, explained with the policy that set it").replace("127.0.0.1:8080", f"127.0.0.1:{web_port}")
        shell_env = {**env, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
        ran = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True,
                             env=shell_env, cwd=tmp_path, timeout=120)
        assert ran.returncode == 0, ran.stdout + ran.stderr
        timeouts = [line for line in ran.stdout.splitlines() if "!! timed out after 100ms (Timeout inventory-timeout)"
                    in line]
        assert len(timeouts) == 2, ran.stdout  # --max 2
        assert re.search(r"^inventory\s", ran.stdout, re.M), ran.stdout  # meshline stat inventory
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(40)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
