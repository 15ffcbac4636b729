"""Capture rules in a real network namespace, with nftables and with iptables: where a
connection lands once they are installed, who is exempt, and that removal leaves nothing.

A stand-in proxy (``meshline.testing.apps origdst``) listens on the capture ports and
answers each connection with the port it arrived on and the original destination the
kernel kept, so every assertion is about a real connection's path.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest

from meshline.agent.capture.rules import CaptureConfig
from meshline.testing.mesh import wait_until
from meshline.testing.netns import Host, HostProcess, TestNetwork, require_netns
from tests.security.support import system_python

PROXY_GID = 5678
NOBODY = 65534

# Connects as the given user/group, sends an HTTP/1.0 request, prints what came back.
_CONNECT = textwrap.dedent("""
    import os, socket, sys
    host, port, uid, gid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    if gid >= 0:
        os.setgroups([]); os.setgid(gid)
    if uid >= 0:
        os.setuid(uid)
    try:
        s = socket.create_connection((host, port), timeout=3)
        s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        print(data.decode(errors="replace"))
    except OSError as err:
        print("ERROR", type(err).__name__, err)
""")


def connect(host: Host, address: str, port: int, uid: int = -1, gid: int = -1) -> str:
    python = system_python() if uid >= 0 else sys.executable  # another user cannot run ours
    return host.run([python, "-I", "-c", _CONNECT, address, str(port), str(uid), str(gid)], timeout=20).stdout


def landed(answer: str) -> dict[str, str]:
    """The stand-in proxy's JSON line ({} when the connection reached something else)."""
    for line in answer.splitlines():
        if line.startswith("{") and '"original"' in line:
            return dict(json.loads(line))
    return {}


def _capture(host: Host, action: str, cfg: CaptureConfig | None = None, *, backend: str = "",
             owner: int | None = None, state_dir: Path) -> str:
    conf = repr(cfg) if cfg is not None else "None"
    code = textwrap.dedent(f"""
        import json, sys
        from pathlib import Path
        from meshline.agent.capture import install as capture
        from meshline.agent.capture.rules import CaptureConfig
        state = Path({str(state_dir)!r})
        try:
            if {action!r} == "install":
                done = capture.install({conf}, owner_pid={owner!r}, state_dir=state, backend={backend!r} or None)
                print(json.dumps(done.to_json()))
            elif {action!r} == "uninstall":
                print(json.dumps(capture.uninstall(state)))
            else:
                print(json.dumps(capture.status(state)))
        except capture.CaptureError as err:
            print("CaptureError:", err)
    """)
    done = host.run([sys.executable, "-c", code], timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _serve(host: Host, name: str, args: list[str]) -> HostProcess:
    proc = host.spawn(name, [sys.executable, "-m", "meshline.testing.apps", *args])
    wait_until(lambda: "serving" in proc.log() or not proc.alive(), 15, what=f"{name} on {host.name}")
    assert proc.alive(), proc.log()
    return proc


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_capture_rules_send_connections_to_the_proxy_and_leave_nothing_behind(tmp_path: Path, backend: str) -> None:
    require_netns("nft", "iptables", "iptables-save")
    state = tmp_path / "state"
    with TestNetwork(tmp_path) as net:
        a, b = net.host("a"), net.host("b")
        _serve(a, "proxy", ["origdst", "--port", "15001", "--port", "15006"])
        _serve(a, "app", ["http", "--name", "app-a", "--port", "8080", "--host", "0.0.0.0"])
        _serve(a, "ssh", ["http", "--name", "ssh-a", "--port", "22", "--host", "0.0.0.0"])
        _serve(b, "app", ["http", "--name", "app-b", "--port", "8080", "--host", "0.0.0.0"])
        assert '"app-a"' in connect(b, a.address, 8080)  # before: straight to the app

        cfg = CaptureConfig(proxy_gid=PROXY_GID, dns_port=None, ipv6=True)
        done = _capture(a, "install", cfg, backend=backend, owner=os.getpid(), state_dir=state)
        assert json.loads(done)["backend"] == backend, done

        # inbound: another host dialing the app's port reaches the proxy's inbound port
        got = landed(connect(b, a.address, 8080))
        assert got == {"port": 15006, "original": f"{a.address}:8080", "peer": b.address}
        assert landed(connect(b, a.address, 9999))["port"] == 15006  # any port, not only the app's
        assert '"ssh-a"' in connect(b, a.address, 22)  # ssh is excluded by default
        # outbound: whatever the workload dials lands on the outbound port, destination kept
        got = landed(connect(a, f"{net.prefix}.200", 80))
        assert got["port"] == 15001 and got["original"] == f"{net.prefix}.200:80"
        assert landed(connect(a, b.address, 8080))["original"] == f"{b.address}:8080"
        # the proxy's own group is never captured, nor is loopback
        assert '"app-b"' in connect(a, b.address, 8080, gid=PROXY_GID)
        assert '"app-a"' in connect(a, "127.0.0.1", 8080)

        st = json.loads(_capture(a, "status", state_dir=state))
        assert st["installed"] and st["backend"] == backend and st["ownerAlive"]
        assert json.loads(_capture(a, "uninstall", state_dir=state)) is True
        st = json.loads(_capture(a, "status", state_dir=state))
        assert not st["installed"] and st["rules"] == ""
        assert '"app-a"' in connect(b, a.address, 8080)  # back to how it was
        assert '"app-b"' in connect(a, b.address, 8080)
        listing = a.run(["nft", "list", "ruleset"]).stdout + a.run(["iptables-save"]).stdout
        assert "MESHLINE" not in listing and "meshline" not in listing


def test_rules_of_a_dead_agent_are_replaced_and_a_live_owner_is_respected(tmp_path: Path) -> None:
    require_netns("nft")
    state = tmp_path / "state"
    with TestNetwork(tmp_path) as net:
        a = net.host("a")
        _serve(a, "proxy", ["origdst", "--port", "15001", "--port", "15006", "--port", "25001"])
        dead = os.fork()
        if dead == 0:
            os._exit(0)
        os.waitpid(dead, 0)
        _capture(a, "install", CaptureConfig(dns_port=None), owner=dead, state_dir=state)
        assert landed(connect(a, f"{net.prefix}.200", 80))["port"] == 15001
        # a new agent (this test's pid) finds the dead one's rules and replaces them
        done = _capture(a, "install", CaptureConfig(outbound_port=25001, dns_port=None), owner=os.getpid(),
                        state_dir=state)  # fmt: skip
        assert json.loads(done)["ownerPid"] == os.getpid(), done
        assert landed(connect(a, f"{net.prefix}.200", 80))["port"] == 25001
        # while that owner lives, another agent is refused with a reason, and nothing changes
        keeper = a.spawn("sleeper", ["sleep", "60"])
        other = _capture(a, "install", CaptureConfig(dns_port=None), owner=keeper.pid, state_dir=state)
        assert other.startswith("CaptureError: another agent (pid") and "one transparent workload" in other
        assert landed(connect(a, f"{net.prefix}.200", 80))["port"] == 25001
        _capture(a, "uninstall", state_dir=state)


def test_with_an_app_user_only_it_is_captured_and_only_it_reaches_the_app_over_loopback(tmp_path: Path) -> None:
    require_netns("nft")
    state = tmp_path / "state"
    with TestNetwork(tmp_path) as net:
        a, b = net.host("a"), net.host("b")
        _serve(a, "proxy", ["origdst", "--port", "15001", "--port", "15006"])
        _serve(a, "app", ["http", "--name", "app-a", "--port", "8080", "--host", "0.0.0.0"])
        _serve(b, "app", ["http", "--name", "app-b", "--port", "8080", "--host", "0.0.0.0"])
        cfg = CaptureConfig(dns_port=None, app_uid=0, local_ports=(8080, 15001))
        _capture(a, "install", cfg, owner=os.getpid(), state_dir=state)

        assert '"app-a"' in connect(a, "127.0.0.1", 8080)  # the workload's own user
        assert '"app-a"' in connect(a, "127.0.0.1", 8080, gid=PROXY_GID)  # its proxy
        refused = connect(a, "127.0.0.1", 8080, uid=NOBODY, gid=NOBODY)  # another local user
        assert refused.startswith("ERROR ConnectionRefusedError"), refused
        assert connect(a, a.address, 8080, uid=NOBODY, gid=NOBODY).startswith("ERROR")  # by any local address
        assert connect(a, "127.0.0.1", 15001, uid=NOBODY, gid=NOBODY).startswith("ERROR")  # nor borrow its outbound
        # the app's user is captured; another user's connections are not (they are not the workload's)
        assert landed(connect(a, b.address, 8080))["port"] == 15001
        assert '"app-b"' in connect(a, b.address, 8080, uid=NOBODY, gid=NOBODY)
        _capture(a, "uninstall", state_dir=state)
