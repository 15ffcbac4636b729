"""An upgrade of a sidecar (agent and Envoy) while its app keeps serving (issue 16), with real
Envoys, mTLS, and a steady bounded load through the caller's sidecar, every request counted.

A fresh copy of the package is installed from this source tree into a new virtualenv with pip
(its version bumped to a patch release, so the new code is seen running). Then:

* ``orders-1`` runs under ``meshline run`` (the app is the agent's child);
  `<new venv>/bin/meshline upgrade-sidecar orders-1 --program <new venv>/bin/meshline` re-executes
  the agent with the new program (same pid), which adopts the app and hot restarts Envoy.
* ``web-1`` (the caller, `meshline dataplane`) is upgraded the way `systemctl reload` does it:
  SIGUSR2, the installed program run again.

0 failed requests, the app's pid never changes (every answer names it), each Envoy is replaced
by a new process that took its listeners, the replaced ones exit, and a graceful stop of the
upgraded agent still stops the app and reports its exit code.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import meshline
from meshline.agent.handoff import read_status
from meshline.testing.load import RATE_HZ, PacedLoad
from meshline.testing.mesh import MeshHarness, Sidecar, wait_until
from meshline.testing.servers import free_port
from tests.e2e.test_zero_downtime import endpoints

NEW_VERSION = ".".join([*meshline.__version__.split(".")[:2], str(int(meshline.__version__.split(".")[2]) + 1)])

APP = """
import json, os, signal, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = json.dumps({"instance": "orders-%d" % os.getpid()}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass

server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
server.serve_forever()
"""


def _source_tree() -> Path:
    root = Path(meshline.__file__).resolve().parents[2]
    if not (root / "pyproject.toml").exists():
        pytest.fail(f"this test installs Meshline from its source tree; no pyproject.toml at {root}")
    return root


@pytest.fixture(scope="module")
def fresh_install(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``bin/meshline`` of a new virtualenv into which pip installed a copy of this source tree
    (version NEW_VERSION); its dependencies are this environment's (a .pth file)."""
    base = tmp_path_factory.mktemp("fresh")
    copy = base / "src-copy"
    (copy / "src").mkdir(parents=True)
    root = _source_tree()
    shutil.copytree(root / "src" / "meshline", copy / "src" / "meshline",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, copy / name)
    for path, old, new in ((copy / "src/meshline/__init__.py", f'"{meshline.__version__}"', f'"{NEW_VERSION}"'),
                           (copy / "pyproject.toml", f'version = "{meshline.__version__}"', f'version = "{NEW_VERSION}"')):
        path.write_text(path.read_text().replace(old, new, 1))
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                    "--no-deps", str(copy)], check=True, timeout=300)  # fmt: skip
    purelib = subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    ours = subprocess.run([sys.executable, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    Path(purelib, "meshline-test-deps.pth").write_text(ours + "\n")
    program = venv / "bin" / "meshline"
    out = subprocess.run([str(program), "--version"], capture_output=True, text=True, timeout=60)
    assert NEW_VERSION in out.stdout, out.stdout + out.stderr
    yield program


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[MeshHarness]:
    spec = {"mtls": {"mode": "strict"}, "defaultPermission": "allow"}
    with MeshHarness(tmp_path, mtls="strict", auth=True, mesh_spec=spec) as m:
        yield m


def envoy_pid(sc: Sidecar) -> int:
    return int((sc.work_dir / "envoy.pid").read_text())


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def run_orders(mesh: MeshHarness, app_port: int) -> Sidecar:
    """orders-1 under `meshline run`, the app its child."""
    name = "orders-1"
    work_dir = mesh.tmp / "dp" / f"default.{name}"
    work_dir.mkdir(parents=True, mode=0o700)
    cmd = mesh.agent_command("orders", app_port, name=name, inbound_port=free_port(), protocol="http", tags={},
                             upstreams={}, mesh="default", work_dir=work_dir)  # fmt: skip
    cmd[cmd.index("dataplane")] = "run"
    cmd += ["--", sys.executable, "-c", APP, str(app_port)]
    log_path = work_dir / "agent.log"
    env = {**os.environ, "MESHLINE_DATA_DIR": str(mesh.data_dir),
           "MESHLINE_TOKEN": mesh.dataplane_token("orders", name=name)}  # fmt: skip
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    sc = Sidecar(name, "orders", "default", int(cmd[cmd.index("--inbound-port") + 1]), app_port, {}, work_dir,
                 proc, log_path)  # fmt: skip
    mesh.sidecars.append(sc)  # the harness stops it, whatever happens
    return sc


def wait_replaced(sc: Sidecar, old_envoy: int) -> None:
    """Until the Envoy a hot restart replaced has exited (the drain is over)."""
    wait_until(lambda: not alive(old_envoy), 60, what=f"{sc.name}'s replaced Envoy {old_envoy} to exit")
    wait_until(lambda: f"the replaced Envoy (pid {old_envoy}) exited" in sc.log(), 30, what="the agent to reap it")


def test_an_upgrade_of_a_sidecar_and_its_envoy_fails_no_request(mesh: MeshHarness, fresh_install: Path) -> None:
    app_port = free_port()
    orders = run_orders(mesh, app_port)
    web = mesh.sidecar("web", app_port=free_port(), upstreams=["orders"])
    wait_until(lambda: endpoints(web) == {orders.inbound_port}, 30, what="web to see orders-1 (ready)")
    load = PacedLoad(web.url("orders") + "/").start()
    try:
        wait_until(lambda: len(load.outcomes) >= RATE_HZ // 2, 30, what="the load to flow")
        app_answers = {w for _, w in load.outcomes}
        orders_envoy, web_envoy = envoy_pid(orders), envoy_pid(web)

        # 1. orders-1 (`meshline run`) to the freshly installed copy, by the operator's command
        started = time.monotonic()
        out = subprocess.run([str(fresh_install), "upgrade-sidecar", "orders-1", "--work-dir", str(orders.work_dir),
                              "--program", str(fresh_install), "--timeout", "120"],
                             capture_output=True, text=True, timeout=180)  # fmt: skip
        upgraded_in = time.monotonic() - started
        assert out.returncode == 0, out.stdout + out.stderr + orders.log()
        wait_replaced(orders, orders_envoy)
        drained_in = time.monotonic() - started

        # 2. web-1 (`meshline dataplane`), as `systemctl reload` does: SIGUSR2, the installed program
        web_asked = time.monotonic()
        web.proc.send_signal(signal.SIGUSR2)
        wait_until(lambda: (read_status(web.work_dir) or {}).get("state") in ("done", "failed"), 120,
                   what="web-1's upgrade")  # fmt: skip
        assert (read_status(web.work_dir) or {}).get("state") == "done", web.log()
        wait_replaced(web, web_envoy)
        after = time.monotonic()
        wait_until(lambda: len(load.since(after)) >= RATE_HZ, 30, what="requests after both upgrades")
    finally:
        load.stop()

    failed = load.failed("orders-")
    marks = {"orders upgrade asked": started, "orders old Envoy gone": started + drained_in, "web asked": web_asked}
    for at, what in failed[:5] + failed[-3:]:
        print(f"  failed at {at - started:+.3f}s after the orders upgrade began: {what}")
    print("  marks:", {k: round(v - started, 3) for k, v in marks.items()})
    gap = re.search(r"xDS proxy up ([0-9.]+)s after", orders.log())
    print(f"sidecar upgrade: {len(failed)} failed of {len(load.outcomes)} requests; xDS proxy back"
          f" {gap.group(1) if gap else '?'}s after the handover; `upgrade-sidecar` returned"
          f" after {upgraded_in:.2f}s, the replaced Envoy had exited {drained_in:.2f}s after it was asked;"
          f" {out.stdout.strip().splitlines()[-1]}")
    assert failed == [], failed
    # the same app process answered every request, before, during and after
    assert {w for _, w in load.outcomes} == app_answers and len(app_answers) == 1, {w for _, w in load.outcomes}
    # the same agent process, now running the new program
    assert orders.proc.poll() is None and web.proc.poll() is None
    assert str(fresh_install) in Path(f"/proc/{orders.proc.pid}/cmdline").read_text()
    log = orders.log()
    assert f"took over dataplane orders-1 from meshline {meshline.__version__}" in log, log
    assert f"upgraded to meshline {NEW_VERSION}: Envoy pid" in log, log
    assert "hot restart epoch 1" in log, log
    # new Envoys, which took the listeners over
    assert envoy_pid(orders) != orders_envoy and envoy_pid(web) != web_envoy
    assert orders.ready() and web.ready()
    server_info = orders.admin("/server_info").json()
    assert server_info["command_line_options"]["restart_epoch"] == 1, server_info["command_line_options"]
    # the upgraded agent still stops gracefully: deregisters, drains, stops the adopted app
    new_envoy = envoy_pid(orders)
    rc = orders.stop(timeout=60)
    stop_log = orders.log()
    assert rc == 0, stop_log
    assert re.search(r"deregistered dataplane orders-1[\s\S]*draining Envoy[\s\S]*waiting for the app", stop_log)
    assert not alive(new_envoy)


def test_an_upgrade_to_a_program_that_does_not_run_changes_nothing(mesh: MeshHarness, tmp_path: Path) -> None:
    """A broken install is refused before anything is stopped: same Envoy, still serving."""
    web = mesh.sidecar("web", app_port=free_port())
    before = envoy_pid(web)
    broken = tmp_path / "meshline-broken"
    broken.write_text("#!/bin/sh\necho 'ImportError: no module named meshline' >&2\nexit 1\n")
    broken.chmod(0o755)
    out = subprocess.run([sys.executable, "-m", "meshline", "upgrade-sidecar", "web-1", "--work-dir", str(web.work_dir),
                          "--program", str(broken), "--timeout", "60"], capture_output=True, text=True, timeout=90)  # fmt: skip
    assert out.returncode == 1, out.stdout + out.stderr
    assert "upgrade of web-1 failed" in out.stderr and "--version failed" in out.stderr, out.stderr
    assert "ImportError" in out.stderr, out.stderr
    assert web.proc.poll() is None and envoy_pid(web) == before and web.ready()
    # a program the control plane would not serve (two minor versions newer) is refused as well
    major, minor = (int(p) for p in meshline.__version__.split(".")[:2])
    too_new = tmp_path / "meshline-too-new"
    too_new.write_text(f"#!/bin/sh\necho 'meshline, version {major}.{minor + 2}.0'\n")
    too_new.chmod(0o755)
    out = subprocess.run([sys.executable, "-m", "meshline", "upgrade-sidecar", "web-1", "--work-dir", str(web.work_dir),
                          "--program", str(too_new), "--timeout", "60"], capture_output=True, text=True, timeout=90)  # fmt: skip
    assert out.returncode == 1 and f"agent {major}.{minor + 2}.0 is newer than control plane" in out.stderr, out.stderr
    assert web.proc.poll() is None and envoy_pid(web) == before and web.ready()
    # an agent that does not catch SIGUSR2 (one from before in-place upgrades) is not sent it
    old_agent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        old_dir = tmp_path / "old-agent"
        old_dir.mkdir(mode=0o700)
        (old_dir / "agent.lock").write_text(f"{old_agent.pid}\n")
        with open(old_dir / "agent.lock") as held:
            fcntl.flock(held, fcntl.LOCK_EX)  # as a running agent holds it
            refused = subprocess.run([sys.executable, "-m", "meshline", "upgrade-sidecar", "old", "--work-dir",
                                      str(old_dir)], capture_output=True, text=True, timeout=60)  # fmt: skip
        assert refused.returncode == 1 and "cannot be upgraded in place" in refused.stderr, refused.stderr
        assert old_agent.poll() is None  # not killed by a SIGUSR2 it does not handle
    finally:
        old_agent.kill()
        old_agent.wait()
    stopped = subprocess.run([sys.executable, "-m", "meshline", "upgrade-sidecar", "nope", "--work-dir",
                              str(tmp_path / "nope")], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert stopped.returncode == 1 and "no agent has run in" in stopped.stderr, stopped.stderr


@pytest.mark.parametrize("moment", ["preparing", "exec"])
def test_a_stop_in_the_middle_of_an_upgrade_is_still_graceful(mesh: MeshHarness, moment: str) -> None:
    """SIGTERM while the old program checks the new one, right after it exec'd it (signals that
    come then, whichever thread takes them, are carried across the exec to the new program)
    or while the new one takes over: the stop is the graceful one (deregistered, drained), not
    a death by signal, and not lost."""
    app_port = free_port()
    orders = run_orders(mesh, app_port)
    wait_until(lambda: "orders-1 is ready for traffic" in orders.log(), 30, what="orders-1 to be ready")
    orders.proc.send_signal(signal.SIGUSR2)
    wanted = ("preparing",) if moment == "preparing" else ("exec", "done")
    wait_until(lambda: (read_status(orders.work_dir) or {}).get("state") in wanted, 60, interval=0.002,
               what=f"the upgrade to be at {moment}")  # fmt: skip
    state = (read_status(orders.work_dir) or {}).get("state")
    orders.proc.send_signal(signal.SIGTERM)
    rc = orders.proc.wait(60)
    log = orders.log()
    print(f"SIGTERM sent while the upgrade was at {state!r}: agent exit {rc}")
    assert rc == 0, log  # the app's exit code after its SIGTERM: a graceful stop
    if moment == "exec":
        assert "took over dataplane orders-1" in log, log
    assert "deregistered dataplane orders-1" in log and "waiting for the app" in log, log
    assert "orders-1" not in {d["name"] for d in mesh.api.get("/api/v1/meshes/default/dataplanes")["items"]}
