"""Finding 8: a crashed sidecar. Callers must stop sending to it within about a second, not
after the 10 s offline timeout, with few failed requests; it is back in service as soon as it
reconnects; and under ``meshline up`` a killed demo agent is restarted instead of stopping the
whole demo.

The bounds here are functional (a caller that keeps sending to a dead instance for 10 s is a
bug), not performance figures: they hold on a loaded 2-core machine with a wide margin.
"""

from __future__ import annotations

import configparser
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import meshline
from meshline.testing.load import RATE_HZ, PacedLoad
from meshline.testing.mesh import MeshHarness, Sidecar, wait_until
from meshline.testing.servers import HttpTestServer, free_port, free_ports

STOP_SENDING_WITHIN_S = 3.0
MAX_FAILED = 10  # requests in flight to the instance when it died, and the few sent before the push


@pytest.fixture
def apps() -> Iterator[tuple[HttpTestServer, HttpTestServer]]:
    with HttpTestServer("orders-a") as a, HttpTestServer("orders-b") as b:
        yield a, b


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[MeshHarness]:
    spec = {"mtls": {"mode": "strict"}, "defaultPermission": "allow"}
    with MeshHarness(tmp_path, mtls="strict", auth=True, mesh_spec=spec) as m:
        yield m


def endpoints(caller: Sidecar) -> set[int]:
    """The orders ports the caller's Envoy would send to now (its EDS view)."""
    ports = set()
    for line in caller.admin("/clusters").text.splitlines():
        if line.startswith("orders::") and "::cx_active::" in line:
            ports.add(int(line.split("::")[1].rsplit(":", 1)[1]))
    return ports


def pair(mesh: MeshHarness, apps: tuple[HttpTestServer, HttpTestServer]) -> tuple[Sidecar, Sidecar, Sidecar]:
    a = mesh.sidecar("orders", app_port=apps[0].port, name="orders-1")
    b = mesh.sidecar("orders", app_port=apps[1].port, name="orders-2")
    web = mesh.sidecar("web", app_port=free_port(), upstreams=["orders"])
    wait_until(lambda: endpoints(web) == {a.inbound_port, b.inbound_port}, 15, what="web to see both instances")
    return a, b, web


def test_callers_stop_sending_to_a_killed_sidecar_within_a_second_or_so(
    mesh: MeshHarness, apps: tuple[HttpTestServer, HttpTestServer]
) -> None:
    victim, survivor, web = pair(mesh, apps)
    load = PacedLoad(web.url("orders") + "/").start()
    try:
        wait_until(lambda: {"orders-a", "orders-b"} <= {w for _, w in load.outcomes}, 10, what="both serving")
        killed_at = time.monotonic()
        victim.kill()  # SIGKILL of the agent; its Envoy dies with it: no deregistration, no goodbye
        wait_until(lambda: victim.inbound_port not in endpoints(web), 15, interval=0.02,
                   what="web to stop sending to the killed instance")
        gone_at = time.monotonic()
        # keep the load on until 50 more requests went out (a count, not a time: the pace drops
        # when the machine is busy)
        wait_until(lambda: len(load.since(gone_at + 0.1)) >= RATE_HZ // 2, 30, what="50 requests after the push")
    finally:
        load.stop()
    after = load.since(killed_at)
    failed = [(at - killed_at, what) for at, what in after if not what.startswith("orders-")]
    assert gone_at - killed_at <= STOP_SENDING_WITHIN_S, f"callers kept the dead instance {gone_at - killed_at:.1f}s"
    assert len(failed) <= MAX_FAILED, failed
    assert all(at <= STOP_SENDING_WITHIN_S for at, _ in failed), failed
    # then every request goes to the survivor and succeeds
    settled = [w for at, w in after if at > gone_at + 0.1]
    assert len(settled) >= RATE_HZ // 2 and set(settled) == {"orders-b"}, settled
    assert endpoints(web) == {survivor.inbound_port}
    print(f"stopped sending after {gone_at - killed_at:.2f}s; {len(failed)} of {len(after)} requests failed: {failed}")


def test_a_restarted_envoy_is_back_in_service_once_it_reconnects(
    mesh: MeshHarness, apps: tuple[HttpTestServer, HttpTestServer]
) -> None:
    victim, _, web = pair(mesh, apps)
    pid = int((victim.work_dir / "envoy.pid").read_text())
    load = PacedLoad(web.url("orders") + "/").start()
    try:
        wait_until(lambda: {"orders-a", "orders-b"} <= {w for _, w in load.outcomes}, 10, what="both serving")
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)  # Envoy only: its agent restarts it
        wait_until(lambda: victim.inbound_port not in endpoints(web), 5, interval=0.02, what="the dead Envoy left out")
        wait_until(lambda: "restarted Envoy" in victim.log(), 15, what="the agent to restart Envoy")
        wait_until(lambda: victim.inbound_port in endpoints(web), 15, what="the new Envoy back in web's endpoints")
        back_at = time.monotonic()
        wait_until(lambda: any(w == "orders-a" for at, w in load.since(back_at)), 10, what="traffic to the new Envoy")
    finally:
        load.stop()
    failed = [(at - killed_at, what) for at, what in load.since(killed_at) if not what.startswith("orders-")]
    assert len(failed) <= MAX_FAILED, failed


def _agent_pid(data: Path, name: str) -> int | None:
    try:
        return int((data / "dataplanes" / f"default.{name}" / "agent.lock").read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_meshline_up_restarts_a_killed_demo_agent(tmp_path: Path) -> None:
    web_port, outbound_base = free_ports(5), free_ports(3)
    data = tmp_path / "data"
    cmd = [sys.executable, "-m", "meshline", "up", "--port", str(web_port), "--outbound-base", str(outbound_base),
           "--data-dir", str(data), "--api-address", f"127.0.0.1:{free_port()}",
           "--xds-address", f"127.0.0.1:{free_port()}"]
    log = tmp_path / "up.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: "Meshline is up" in log.read_text() or proc.poll() is not None, 90,
                   what="meshline up to be ready")
        assert proc.poll() is None, log.read_text()
        first = _agent_pid(data, "inventory-1")
        assert first is not None and _alive(first)
        os.kill(first, signal.SIGKILL)  # its app and Envoy die with it
        wait_until(lambda: "restarted inventory-1" in log.read_text() or proc.poll() is not None, 30,
                   what="meshline up to restart the agent")
        assert proc.poll() is None, log.read_text()[-3000:]
        text = log.read_text()
        assert "warning: inventory-1 exited with -9" in text and "restarting it in" in text
        wait_until(lambda: (pid := _agent_pid(data, "inventory-1")) not in (None, first) and _alive(pid), 15,
                   what="a new agent for inventory-1")

        def through() -> bool:  # web -> orders -> inventory, with inventory's new sidecar
            r = httpx.get(f"http://127.0.0.1:{web_port}/", timeout=5)
            return r.status_code == 200 and r.json()["upstream"]["upstream"]["service"] == "inventory"

        wait_until(through, 60, interval=0.2, what="the demo to answer through the restarted inventory")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(40)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    assert proc.returncode == 0, log.read_text()[-2000:]


UNITS = Path(meshline.__file__).parent / "deploy" / "systemd"


def _unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    parser.read_string(path.read_text())
    return parser


def test_shipped_systemd_units_restart_crashed_agents_and_are_hardened(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is missing; CI must check the shipped units")
        pytest.skip("no systemd-analyze on this machine")
    cp_unit, dp_unit = UNITS / "meshline-control-plane.service", UNITS / "meshline-dataplane@.service"
    for path in (cp_unit, dp_unit):  # systemd's own check, with our binary where the unit expects it
        (tmp_path / path.name).write_text(path.read_text().replace("/opt/meshline/venv/bin/meshline",
                                                                   str(Path(sys.executable).parent / "meshline")))
    out = subprocess.run([analyze, "verify", "./meshline-control-plane.service", "./meshline-dataplane@orders-1.service"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout + out.stderr == "", out.stdout + out.stderr

    from meshline.cli.agent import dataplane

    known = {opt for param in dataplane.params for opt in param.opts}
    for path in (cp_unit, dp_unit):
        service = _unit(path)["Service"]
        assert service["Restart"] == "on-failure" and service["User"] not in ("", "root")
        assert service["NoNewPrivileges"] == "yes" and service["ProtectSystem"] == "strict"
        assert service["CapabilityBoundingSet"] == "" and service["UMask"] == "0077"
        assert service["StateDirectoryMode"] == "0700"
        assert _unit(path)["Unit"]["StartLimitIntervalSec"] == "0"  # never gives up restarting
    dp = _unit(dp_unit)["Service"]
    assert dp["LoadCredential"] == "token:/etc/meshline/dataplanes/%i.token"  # a credential, not the env
    argv = shlex.split(dp["ExecStart"])
    assert argv[1] == "dataplane" and argv[argv.index("--token-file") + 1] == "${CREDENTIALS_DIRECTORY}/token"
    assert {a for a in argv if a.startswith("--")} <= known
    assert dp["User"] != _unit(cp_unit)["Service"]["User"]
    # systemd must not SIGKILL a graceful stop with the default waits (docs/operations.md)
    from meshline.agent.config import AgentConfig

    graceful = AgentConfig.callers_ack_timeout + AgentConfig.drain_seconds + 2 * AgentConfig.stop_timeout
    assert dp["KillMode"] == "mixed" and float(dp["TimeoutStopSec"].removesuffix("s")) > graceful
