"""A transparent agent's rules over its life: removed on a clean stop, replaced after kill -9 by
the next start, removable by `meshline transparent-proxy uninstall`; and bad input refused
with one line before anything is installed."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from meshline.testing.hostmesh import HostMesh
from meshline.testing.netns import Host, HostProcess, TestNetwork, require_netns

APP = [sys.executable, "-m", "meshline.testing.apps", "http", "--host", "0.0.0.0", "--port", "8080"]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostMesh]:
    require_netns("nft", "curl", "setpriv")
    work = tmp_path_factory.mktemp("transparent-life")
    with TestNetwork(work) as net:
        m = HostMesh(net, work).start()
        try:
            yield m
        finally:
            m.stop()


def rules(host: Host) -> str:
    return host.run(["nft", "list", "ruleset"]).stdout + host.run(["iptables-save"]).stdout


def run(mesh: HostMesh, host: Host, *extra: str, name: str = "", wait: bool = True) -> HostProcess:
    return mesh.run(host, "shop", 8080, [*APP, "--name", name or f"shop-{host.name}"], protocol="http",
                    name=name or f"shop-{host.name}", extra=extra, wait=wait)  # fmt: skip


def failed(proc: HostProcess) -> str:
    """The agent's output once it has exited 1 (what a user sees)."""
    assert proc.proc.wait(90) == 1, proc.log()
    return proc.log().strip()


def test_rules_go_on_clean_stop_and_after_kill_9_the_next_start_or_uninstall_removes_them(mesh: HostMesh) -> None:
    x = mesh.net.host("x")
    agent = run(mesh, x)
    assert "table inet meshline" in rules(x)
    status = mesh.cli("transparent-proxy", "status", host=x)
    assert f"agent pid {agent.pid} (running)" in status, status
    assert agent.stop() == 143 or agent.proc.returncode in (0, 143)
    assert "meshline" not in rules(x).lower()
    assert "capture rules removed" in agent.log()

    crashed = run(mesh, x, name="shop-x2")
    crashed.kill()  # kill -9: nothing of the agent runs to remove them
    assert "table inet meshline" in rules(x)
    assert "gone: the next agent start" in mesh.cli("transparent-proxy", "status", host=x)
    again = run(mesh, x, name="shop-x3")
    assert f"removing stale capture rules of a previous agent (pid {crashed.pid})" in again.log()
    assert x.curl("http://127.0.0.1:8080/")[0] == 200
    again.kill()
    assert "capture rules removed" in mesh.cli("transparent-proxy", "uninstall", host=x)
    assert "meshline" not in rules(x).lower()
    assert "no capture rules in this network namespace" in mesh.cli("transparent-proxy", "status", host=x)


def _one_line_error(out: str, *words: str) -> None:
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out
    for w in words:
        assert w in errors[0], out


def test_bad_input_is_one_line_and_installs_nothing(mesh: HostMesh) -> None:
    y = mesh.net.host("y")
    # the app's own port excluded from inbound capture: the app would be reachable around Envoy
    out = failed(run(mesh, y, "--exclude-inbound-port", "8080", name="shop-y1", wait=False))
    _one_line_error(out, "port 8080 is the app's port", "--exclude-inbound-port")
    assert "meshline" not in rules(y).lower()

    # no CAP_NET_ADMIN (root without it, as in a container)
    args = ["setpriv", "--bounding-set=-net_admin", "--inh-caps=-net_admin", "--"]
    proc = y.spawn("nocap", [*args, sys.executable, "-m", "meshline", "run", "--transparent", "--service", "shop",
                             "--port", "8080", "--api", mesh.api_url, "--ca-file", str(mesh.ca_file),
                             "--token-file", str(mesh.token("shop")), "--work-dir", str(mesh.work / "dp" / "nocap"),
                             "--", *APP, "--name", "x"], env=mesh.env())  # fmt: skip
    _one_line_error(failed(proc), "needs root or CAP_NET_ADMIN")
    assert "meshline" not in rules(y).lower()

    # someone else's redirect rules in this namespace
    y.run(["nft", "-f", "-"], input="table ip other {\n chain out {\n  type nat hook output priority -100;\n"
                                     "  tcp dport 80 redirect to :9999\n }\n}\n", check=True)  # fmt: skip
    _one_line_error(failed(run(mesh, y, name="shop-y2", wait=False)), "already has redirect rules", "ip other")
    assert "table inet meshline" not in rules(y)
    y.run(["nft", "delete", "table", "ip", "other"], check=True)

    # the mesh's VIP range is a route of this host
    y.run(["ip", "route", "add", "240.240.0.0/24", "dev", "eth0"], check=True)
    _one_line_error(failed(run(mesh, y, name="shop-y3", wait=False)), "collides with this host's route 240.240.0.0/24",
                    "transparentProxy.vipRange")  # fmt: skip
    assert "meshline" not in rules(y).lower()
    assert "shop-y3" not in mesh.dataplanes()  # deregistered again: nothing left half-done
