"""README's "Running the parts yourself", run as written: a fresh data dir, a fresh user's
home where another control plane (as `meshline up` runs one) already left its admin token
and CLI context. Only the ports and the data dir's path are changed (tests run in parallel)."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from meshline.testing.mesh import wait_until
from meshline.testing.servers import HttpTestServer, free_port

README = Path(__file__).parents[2] / "README.md"
LONG_RUNNING = ("meshline control-plane", "meshline run", "meshline dataplane")


def readme_commands() -> list[str]:
    """The shell commands of the section's first ``sh`` block (continuations and heredocs joined)."""
    text = README.read_text()
    section = text[text.index("## Running the parts yourself"):]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None
    commands: list[str] = []
    lines = block.group(1).splitlines()
    i = 0
    while i < len(lines):
        cmd = lines[i]
        while cmd.rstrip().endswith("\\"):
            i += 1
            cmd = cmd.rstrip()[:-1] + " " + lines[i].strip()
        heredoc = re.search(r"<<'?(\w+)'?", cmd)
        if heredoc:
            while lines[i].strip() != heredoc.group(1):
                i += 1
                cmd += "\n" + lines[i]
        commands.append(cmd)
        i += 1
    return commands


APP = textwrap.dedent("""
    import json, os, urllib.request
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            try:
                url = "http://" + os.environ["MESHLINE_OUTBOUND_INVENTORY"] + "/"
                with urllib.request.urlopen(url, timeout=5) as r:
                    body, status = json.dumps({"service": "orders", "upstream": json.loads(r.read())}).encode(), 200
            except Exception as err:
                body, status = repr(err).encode(), 502
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    HTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
""")


class Shell:
    def __init__(self, tmp: Path) -> None:
        self.cwd = tmp / "work"
        self.cwd.mkdir()
        self.home = tmp / "home"
        self.home.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith("MESHLINE_") and k != "XDG_CONFIG_HOME"}
        env["HOME"] = str(self.home)
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
        self.env = env
        self.procs: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, cmd: str, log_name: str, extra_env: dict[str, str] | None = None) -> Path:
        log = self.cwd / log_name
        with open(log, "wb") as out:
            proc = subprocess.Popen(["bash", "-c", f"exec {cmd}"], cwd=self.cwd, stdout=out, stderr=subprocess.STDOUT,
                                    env={**self.env, **(extra_env or {})}, start_new_session=True)
        self.procs.append((proc, log))
        return log

    def run(self, cmd: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(["bash", "-c", cmd], cwd=self.cwd, env=self.env, capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 0, f"`{cmd}` failed:\n{result.stdout}\n{result.stderr}"
        return result

    def current_context(self) -> str | None:
        path = self.home / ".config" / "meshline" / "config.yaml"
        if not path.exists():
            return None
        return (yaml.safe_load(path.read_text()) or {}).get("current")

    def stop(self) -> None:
        for proc, _ in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc, _ in reversed(self.procs):
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture
def shell(tmp_path: Path) -> Iterator[Shell]:
    sh = Shell(tmp_path)
    try:
        yield sh
    finally:
        sh.stop()


def _wait_output(log: Path, text: str, proc_index: int, shell: Shell, what: str) -> None:
    proc = shell.procs[proc_index][0]
    wait_until(lambda: text in log.read_text(errors="replace") or proc.poll() is not None, 60, what=what)
    assert proc.poll() is None, log.read_text(errors="replace")


def test_running_the_parts_yourself_works_as_written(shell: Shell, tmp_path: Path) -> None:
    # What `meshline up` leaves: a control plane on the default data dir (~/.meshline) with
    # its admin token there, and its context current.
    up_api = free_port()
    up_log = shell.start("meshline control-plane", "up.log", {"MESHLINE_API_ADDRESS": f"127.0.0.1:{up_api}",
                                                             "MESHLINE_XDS_ADDRESS": f"127.0.0.1:{free_port()}"})
    wait_until(lambda: shell.current_context() == f"local-{up_api}" or shell.procs[0][0].poll() is not None, 60,
               what="the first control plane to write its context")
    assert (shell.home / ".meshline" / "admin.token").exists(), up_log.read_text()

    app_port, inventory_port, upstream_port, api_port = free_port(), free_port(), free_port(), free_port()
    data_dir = tmp_path / "var-lib-meshline"
    subst = {"/var/lib/meshline": str(data_dir), "8080": str(app_port), "8083": str(inventory_port),
             "15002": str(upstream_port)}
    (shell.cwd / "app.py").write_text(APP.replace("PORT", str(app_port)))
    inventory = HttpTestServer("inventory", port=inventory_port).start()
    try:
        outputs: dict[str, str] = {}
        for raw in readme_commands():
            cmd = raw
            for old, new in subst.items():
                cmd = cmd.replace(old, new)
            if cmd.startswith("meshline control-plane"):
                shell.start(cmd, "cp.log", {"MESHLINE_API_ADDRESS": f"127.0.0.1:{api_port}",
                                            "MESHLINE_XDS_ADDRESS": f"127.0.0.1:{free_port()}"})
                wait_until(lambda: shell.current_context() == f"local-{api_port}"
                           or shell.procs[-1][0].poll() is not None, 60, what="the README's control plane")
                assert shell.procs[-1][0].poll() is None, (shell.cwd / "cp.log").read_text()
            elif cmd.startswith(LONG_RUNNING):
                name = cmd.split()[1]
                log = shell.start(cmd, f"{name}.log")
                _wait_output(log, "Envoy is ready", len(shell.procs) - 1, shell, f"`{raw.splitlines()[0]}`")
                assert "xDS: the control plane's xDS server at" in log.read_text()
            else:
                outputs[raw] = shell.run(cmd).stdout
        for service in ("orders", "inventory"):
            token = shell.cwd / f"{service}.token"
            assert token.read_text().strip() and stat.S_IMODE(token.stat().st_mode) == 0o600
        listing = next(v for k, v in outputs.items() if k.startswith("meshline get dataplanes"))
        assert "orders-" in listing and "inventory-" in listing
        assert "deleted" in next(v for k, v in outputs.items() if k.startswith("meshline delete"))
        # orders' app reaches inventory through both sidecars
        # (the inventory sidecar is taken into the mesh once its app answers; awaited here)
        last: list[httpx.Response] = []

        def answered() -> bool:
            last[:] = [httpx.get(f"http://127.0.0.1:{app_port}/", timeout=10)]
            return last[0].status_code == 200

        try:
            wait_until(answered, 30, what="orders -> inventory through the sidecars")
        except TimeoutError:
            logs = {p.name: p.read_text(errors="replace")[-1500:] for _, p in shell.procs}
            raise AssertionError(f"{last[0].status_code} {last[0].text}\n{logs}") from None
        assert last[0].json()["upstream"]["instance"] == "inventory"
        assert inventory.count() >= 1
    finally:
        inventory.stop()
