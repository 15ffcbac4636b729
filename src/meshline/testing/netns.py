"""Test hosts on one Linux machine: network namespaces on a private bridge.

    with TestNetwork(tmp_path) as net:
        cp = net.host("cp")          # 10.213.N.10, its own loopback, routes, iptables
        a = net.host("a")
        a.spawn("app", ["python3", "-m", "http.server", "8080"])
        print(cp.run(["curl", "-s", f"http://{a.address}:8080/"]).stdout)

Every host is a namespace with one veth (``eth0``) whose other end sits on a bridge in a
namespace of its own (the "switch"), so the machine's own network is never touched. Each
host gets a default route via the switch's address: without one, a connection to an
address outside the subnet fails before any NAT rule sees it (shared/NETNS-NOTES.md).
Addresses exist only inside these namespaces. Names carry a per-run prefix so parallel
runs never collide, and :meth:`TestNetwork.close` (also run on ``__exit__``) stops every
process the test started there and deletes every namespace, even after a failure; a run
killed before it could clean up is cleaned up by the next one (:func:`remove_stale`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PREFIX = "mlt"  # every namespace a test makes starts with this
SUBNET_FIRST, SUBNET_COUNT = 16, 200  # 10.213.16.0/24 .. 10.213.215.0/24, one per run
RUN_DIR = Path("/run/meshline-test-netns")  # per run: the pid that owns it, for stale cleanup


class NetnsUnavailable(RuntimeError):
    """This machine cannot make test hosts (not root, no iproute2, no netns support)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=20)


def unavailable_reason() -> str | None:
    """Why test hosts cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    probe = f"{PREFIX}probe{os.getpid()}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def require_netns(*programs: str) -> None:
    """Skip a test that needs test hosts (and ``programs`` in them, e.g. ``nft``) where they
    cannot be had; under CI, fail instead."""
    why = unavailable_reason()
    missing = [p for p in programs if shutil.which(p) is None and not Path(f"/usr/sbin/{p}").exists()]
    if why is None and missing:
        why = f"needs {', '.join(missing)} (scripts/test installs them as root)"
    if why is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{why}; CI must be able to run the multi-host tests")
    pytest.skip(why)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _namespaces() -> list[str]:
    out = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _kill_namespace_processes(ns: str) -> None:
    pids = _ip("netns", "pids", ns, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError, PermissionError):
            os.kill(int(pid), signal.SIGKILL)
    deadline = time.monotonic() + 5
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if p.isdigit() and _pid_alive(int(p))]
        if pids:
            time.sleep(0.02)


def _delete_namespace(ns: str) -> None:
    _kill_namespace_processes(ns)
    _ip("netns", "del", ns, check=False)
    shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)


def remove_stale() -> list[str]:
    """Delete the namespaces of test runs whose process is gone (killed before cleaning up)."""
    removed: list[str] = []
    if not RUN_DIR.is_dir():
        return removed
    for marker in RUN_DIR.iterdir():
        try:
            owner = int(marker.read_text().strip())
        except (OSError, ValueError):
            owner = 0
        if owner and _pid_alive(owner):
            continue
        run = marker.name
        for ns in _namespaces():
            if ns.startswith(run):
                _delete_namespace(ns)
                removed.append(ns)
        with contextlib.suppress(OSError):
            marker.unlink()
    return removed


def _claim_run() -> tuple[str, int]:
    """A run id (namespace prefix) and a subnet index no live run uses."""
    RUN_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
    start = os.getpid() % SUBNET_COUNT
    for i in range(SUBNET_COUNT):
        index = (start + i) % SUBNET_COUNT
        run = f"{PREFIX}{index:03d}"
        try:
            fd = os.open(RUN_DIR / run, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n")
        return run, SUBNET_FIRST + index
    raise NetnsUnavailable(f"all {SUBNET_COUNT} test subnets are in use (see {RUN_DIR})")


@dataclass
class HostProcess:
    """A process started inside a test host; its output goes to ``log_path``."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def signal(self, signum: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signum)

    def stop(self, timeout: float = 15) -> int:
        """SIGTERM, then SIGKILL for the whole process group after ``timeout``."""
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.proc.wait(5)
        return self.proc.returncode

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)


@dataclass
class Host:
    """One test host: a network namespace with ``eth0`` at ``address`` on the test subnet."""

    name: str
    ns: str
    address: str
    network: TestNetwork
    switch_port: str  # its veth end on the switch's bridge (set it down to cut the host off)
    processes: list[HostProcess] = field(default_factory=list)

    def command(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *argv]

    def run(self, argv: Sequence[str], *, timeout: float = 30, check: bool = False,
            env: Mapping[str, str] | None = None, input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command in this host and wait for it."""
        return subprocess.run(self.command(argv), capture_output=True, text=True, timeout=timeout, check=check,
                              env=dict(env) if env is not None else None, input=input)  # fmt: skip

    def spawn(self, name: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
              cwd: Path | None = None) -> HostProcess:
        """Start a long-running process in this host (its own process group, output to a log)."""
        log_path = self.network.work_dir / f"{self.name}.{name}.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(self.command(argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=dict(env) if env is not None else None, cwd=cwd, start_new_session=True)  # fmt: skip
        hp = HostProcess(f"{self.name}.{name}", proc, log_path)
        self.processes.append(hp)
        return hp

    def curl(self, url: str, *args: str, timeout: float = 10) -> tuple[int, str]:
        """(HTTP status, body) of a request made from this host; status 0 when no response came."""
        done = self.run(["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", "--max-time", f"{timeout:g}", *args, url],
                        timeout=timeout + 5)  # fmt: skip
        body, _, code = done.stdout.rpartition("\n")
        return (int(code) if code.isdigit() else 0), body

    def set_resolver(self, nameserver: str) -> None:
        """Give processes started from now on in this host their own /etc/resolv.conf."""
        d = Path("/etc/netns") / self.ns
        d.mkdir(parents=True, exist_ok=True)
        (d / "resolv.conf").write_text(f"nameserver {nameserver}\n")

    def disconnect(self) -> None:
        """Cut this host off the network (its switch port down), as a partition would."""
        _ip("-n", self.network.switch, "link", "set", self.switch_port, "down")

    def reconnect(self) -> None:
        _ip("-n", self.network.switch, "link", "set", self.switch_port, "up")

    def stop_processes(self) -> None:
        for hp in reversed(self.processes):
            with contextlib.suppress(Exception):
                hp.stop(timeout=10)


class TestNetwork:
    """A private subnet with a switch and the test hosts on it (see the module docstring)."""

    __test__ = False  # not a pytest test class

    def __init__(self, work_dir: Path) -> None:
        require_netns()
        remove_stale()
        self.run_id, index = _claim_run()
        self.prefix = f"10.213.{index}"
        self.switch = f"{self.run_id}sw"
        self.hosts: dict[str, Host] = {}
        self.work_dir = work_dir
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._next = 10
        try:
            _ip("netns", "add", self.switch)
            _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.switch, "addr", "add", f"{self.gateway}/24", "dev", "br0")
            _ip("-n", self.switch, "link", "set", "br0", "up")
            _ip("-n", self.switch, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise

    @property
    def gateway(self) -> str:
        """The switch's own address: every host's default route (nothing is forwarded beyond it)."""
        return f"{self.prefix}.1"

    def host(self, name: str) -> Host:
        """A new host with the next free address (.10, .11, ...)."""
        if name in self.hosts:
            raise ValueError(f"host {name} exists")
        n = self._next
        self._next += 1
        ns = f"{self.run_id}{name}"
        address = f"{self.prefix}.{n}"
        outer, inner = f"{self.run_id}v{n}", f"{self.run_id}i{n}"  # <= 15 characters
        _ip("netns", "add", ns)
        host = Host(name, ns, address, self, outer)
        self.hosts[name] = host
        _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
        _ip("link", "set", outer, "netns", self.switch)
        _ip("link", "set", inner, "netns", ns)
        _ip("-n", self.switch, "link", "set", outer, "master", "br0")
        _ip("-n", self.switch, "link", "set", outer, "up")
        _ip("-n", ns, "link", "set", inner, "name", "eth0")
        _ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "route", "add", "default", "via", self.gateway)
        return host

    def namespaces(self) -> list[str]:
        return [ns for ns in _namespaces() if ns.startswith(self.run_id)]

    def close(self) -> None:
        for host in reversed(list(self.hosts.values())):
            host.stop_processes()
        for ns in self.namespaces():
            _delete_namespace(ns)
        with contextlib.suppress(OSError):
            (RUN_DIR / self.run_id).unlink()
        self.hosts.clear()

    def __enter__(self) -> TestNetwork:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

