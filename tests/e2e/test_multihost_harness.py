"""The multi-host harness itself: hosts reach each other over the test subnet and nothing else,
a partition cuts a host off, and everything the harness made is gone afterwards."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from meshline.testing import netns
from meshline.testing.mesh import wait_until
from meshline.testing.netns import TestNetwork


def _app(host: netns.Host, name: str, port: int, bind: str) -> netns.HostProcess:
    proc = host.spawn(name, [sys.executable, "-m", "meshline.testing.apps", "http", "--name", name,
                             "--port", str(port), "--host", bind])  # fmt: skip
    wait_until(lambda: "serving" in proc.log() or not proc.alive(), 15, what=f"{name} to listen")
    assert proc.alive(), proc.log()
    return proc


def test_hosts_talk_over_the_subnet_and_are_removed_afterwards(tmp_path: Path) -> None:
    netns.require_netns("curl")
    net = TestNetwork(tmp_path)
    try:
        a, b = net.host("a"), net.host("b")
        assert a.address != b.address and a.address.startswith(net.prefix)
        _app(a, "wide", 8080, "0.0.0.0")
        _app(a, "local", 8081, "127.0.0.1")

        code, body = b.curl(f"http://{a.address}:8080/hello")
        assert code == 200
        answer = json.loads(body)
        assert answer["instance"] == "wide" and answer["remote"] == b.address  # the caller's own address
        assert b.curl(f"http://{a.address}:8081/", timeout=2)[0] == 0  # a's loopback stays a's
        assert a.curl("http://127.0.0.1:8081/")[0] == 200
        # the machine's own loopback is not the hosts' loopback
        assert b.curl("http://127.0.0.1:8080/", timeout=2)[0] == 0

        a.disconnect()
        assert b.curl(f"http://{a.address}:8080/", timeout=2)[0] == 0
        a.reconnect()
        wait_until(lambda: b.curl(f"http://{a.address}:8080/", timeout=2)[0] == 200, 10, what="a back on the net")

        out = tmp_path / "load.json"
        done = b.run([sys.executable, "-m", "meshline.testing.apps", "load", "--url", f"http://{a.address}:8080/",
                      "--count", "20", "--interval", "0", "--out", str(out)])  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert json.loads(out.read_text())["codes"] == {"200": 20}
        made = net.namespaces()
        assert len(made) == 3  # switch + 2 hosts
    finally:
        net.close()
    assert not set(made) & set(netns._namespaces())
    assert not (netns.RUN_DIR / net.run_id).exists()


def test_a_run_that_died_is_cleaned_up_by_the_next(tmp_path: Path) -> None:
    net = TestNetwork(tmp_path)
    net.host("x")
    left = net.namespaces()
    # the run's owner is gone (as after kill -9): its marker names a pid that no longer exists
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    (netns.RUN_DIR / net.run_id).write_text(f"{dead}\n")
    try:
        removed = netns.remove_stale()
        assert set(left) <= set(removed)
        assert not set(left) & set(netns._namespaces())
    finally:
        net.close()
