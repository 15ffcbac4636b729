"""`meshline up`: a control plane on its embedded store and the demo, meshed, in one command.

The control plane runs in this process; each demo service runs under its own
`meshline run` agent (a subprocess), exactly as a user would run them on hosts.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

from meshline.agent.backoff import Backoff
from meshline.controlplane.settings import Settings
from meshline.core.errors import MeshlineError
from meshline.core.tasks import wait_set
from meshline.server.controlplane import ControlPlane

SUPERVISE_EVERY = 0.5  # seconds between looks at the demo agents once the demo runs


@dataclass(frozen=True)
class DemoService:
    name: str  # dataplane name
    role: str  # web | orders | inventory
    version: str
    app_port: int
    upstream: tuple[str, int] | None  # (service, local port)
    app_args: tuple[str, ...] = ()  # extra arguments of the demo app (a broken version's failures)


BROKEN = ("--fail-ratio", "0.3", "--delay-ms", "150")  # `meshline up --broken-v2`: a release to roll back


GATEWAY = "gateway"  # the role of the demo's ingress gateway (service edge)


def demo_services(web_port: int, outbound_base: int = 15001, broken_v2: bool = False) -> list[DemoService]:
    """The ingress gateway ``edge`` listens on the web port (8080): a newcomer's first request
    enters the mesh the way production traffic does, through the gateway, over mTLS to web.
    App ports follow it (8081..8084); each instance gets its own outbound port because all of
    them share 127.0.0.1."""
    return [
        DemoService("inventory-1", "inventory", "v1", web_port + 3, None),
        DemoService("orders-v1", "orders", "v1", web_port + 1, ("inventory", outbound_base + 1)),
        DemoService("orders-v2", "orders", "v2", web_port + 2, ("inventory", outbound_base + 2),
                    BROKEN if broken_v2 else ()),
        DemoService("web-1", "web", "v1", web_port + 4, ("orders", outbound_base)),
        DemoService("edge-1", GATEWAY, "v1", web_port, None),
    ]


def gateway_documents(web_port: int) -> list[dict[str, object]]:
    """The demo gateway's listener (on the web port, so it follows --port) and its route to web."""
    return [
        {"kind": "MeshGateway", "mesh": "default", "name": "edge",
         "spec": {"listeners": [{"name": "http", "port": web_port, "protocol": "HTTP"}]}},
        {"kind": "MeshGatewayRoute", "mesh": "default", "name": "web",
         "spec": {"parents": [{"gateway": "edge", "listener": "http"}], "rules": [{"backends": [{"service": "web"}]}]}},
    ]  # fmt: skip


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


@dataclass
class Demo:
    settings: Settings
    web_port: int = 8080
    outbound_base: int = 15001
    say: Callable[[str], None] = print
    broken_v2: bool = False
    token_for: Callable[[str], str | None] = lambda service: None
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: Path = Path(".")
    # restarting crashed agents (see supervise)
    _spawn: dict[str, tuple[list[str], dict[str, str]]] = field(default_factory=dict)
    _started: dict[str, float] = field(default_factory=dict)
    _backoff: dict[str, Backoff] = field(default_factory=dict)
    _due: dict[str, float] = field(default_factory=dict)

    def check_ports(self) -> None:
        wanted = [(s.app_port, f"the {s.name} app") for s in demo_services(self.web_port, self.outbound_base)]
        wanted += [(s.upstream[1], f"{s.name}'s outbound to {s.upstream[0]}") for s in demo_services(self.web_port, self.outbound_base)
                   if s.upstream and s.role != GATEWAY]
        busy = [f"{port} ({what})" for port, what in wanted if not port_free(port)]
        if busy:
            raise MeshlineError(
                f"ports already in use: {', '.join(busy)}; stop what uses them (another `meshline up`?)"
                " or pass --port to move the demo"
            )

    def agent_command(self, s: DemoService, api_url: str, xds: str) -> list[str]:
        work_dir = str(self.settings.data_dir / "dataplanes" / f"default.{s.name}")
        if s.role == GATEWAY:
            return [sys.executable, "-m", "meshline", "gateway", "--name", "edge", "--dataplane-name", s.name,
                    "--port", str(s.app_port), "--api", api_url, "--xds-address", xds, "--work-dir", work_dir]
        cmd = [sys.executable, "-m", "meshline", "run", "--service", s.role, "--name", s.name,
               "--port", str(s.app_port), "--protocol", "http", "--tag", f"version={s.version}",
               "--tag", "zone=local", "--api", api_url, "--xds-address", xds,
               "--work-dir", str(self.settings.data_dir / "dataplanes" / f"default.{s.name}")]
        if s.upstream:
            cmd += ["--upstream", f"{s.upstream[0]}={s.upstream[1]}"]
        cmd += ["--", sys.executable, "-m", "meshline.demo.app", "--role", s.role, "--version", s.version,
                "--port", str(s.app_port), *s.app_args]
        return cmd

    def start_agents(self, api_url: str, xds: str) -> None:
        self.logs = self.settings.data_dir / "demo-logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        for s in demo_services(self.web_port, self.outbound_base, self.broken_v2):
            # the agents find the control plane's CA (cp-ca.pem) in its data dir
            env = {**os.environ, "MESHLINE_DATA_DIR": str(self.settings.data_dir)}
            env.pop("MESHLINE_TOKEN", None)  # each agent gets its own dataplane token, or none
            token = self.token_for("edge" if s.role == GATEWAY else s.role)
            if token:
                env["MESHLINE_TOKEN"] = token
            self._spawn[s.name] = (self.agent_command(s, api_url, xds), env)
            self._backoff[s.name] = Backoff()
            self._start(s.name, "wb")

    def _start(self, name: str, mode: str) -> None:
        cmd, env = self._spawn[name]
        with open(self.logs / f"{name}.log", mode) as log:
            self.procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                                start_new_session=True)
        self._started[name] = time.monotonic()

    def exit_line(self, name: str) -> str:
        p = self.procs[name]
        tail = (self.logs / f"{name}.log").read_text(errors="replace").strip().splitlines()[-5:]
        return f"{name} exited with {p.returncode}: " + " | ".join(tail)

    def failed(self) -> str | None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                return self.exit_line(name)
        return None

    def supervise(self, now: float) -> None:
        """Once the demo runs: restart an agent that exited, with backoff (a crash of one demo
        service must not stop the others, nor leave it down)."""
        for name, p in self.procs.items():
            if p.poll() is not None and name not in self._due:
                delay = self._backoff[name].failed(now - self._started[name])
                self.say(f"warning: {self.exit_line(name)}; restarting it in {delay:g}s")
                self._due[name] = now + delay
        for name, when in list(self._due.items()):
            if now >= when:
                del self._due[name]
                self._start(name, "ab")
                self.say(f"restarted {name} (pid {self.procs[name].pid})")

    async def wait_first_request(self, stop: asyncio.Event, timeout: float = 60) -> dict[str, object] | None:
        """The first answer through web -> orders -> inventory; None if asked to stop meanwhile."""
        deadline = time.monotonic() + timeout
        last = ""
        async with httpx.AsyncClient(timeout=2) as client:
            while time.monotonic() < deadline:
                if stop.is_set():
                    return None
                err = self.failed()
                if err:
                    raise MeshlineError(f"the demo could not start: {err}")
                try:
                    r = await client.get(f"http://127.0.0.1:{self.web_port}/")
                    body = r.json()
                    if r.status_code == 200 and isinstance(body.get("upstream"), dict) and \
                            body["upstream"].get("upstream", {}).get("service") == "inventory":
                        return dict(body)
                    last = f"HTTP {r.status_code}"
                except (httpx.HTTPError, ValueError) as e:
                    last = type(e).__name__
                await asyncio.sleep(0.1)
        raise MeshlineError(f"the demo did not answer through the mesh within {timeout:.0f}s (last: {last});"
                            f" see the logs in {self.logs}")

    def stop(self, timeout: float = 15) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p in self.procs.values():
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)


async def wait_all_ready(cp: ControlPlane, names: list[str], stop: asyncio.Event, demo: Demo,
                         timeout: float = 60) -> None:
    """Every demo sidecar registered, ready for traffic and running its current config, so the
    first requests (and the stats a newcomer looks at first) see no start-up failures."""
    from meshline.xds.names import node_id

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stop.is_set():
        err = demo.failed()
        if err:
            raise MeshlineError(f"the demo could not start: {err}")
        ready = {r.name for r in await cp.store.list("Dataplane", "default") if getattr(r.spec, "ready", False)}
        synced = {n for n in names if (st := cp.status.find(node_id("default", n))) and st.in_sync()}
        if set(names) <= ready & synced:
            await asyncio.sleep(0.2)  # one debounce + push for the last endpoint to reach callers
            return
        await asyncio.sleep(0.1)


async def apply_demo_resources(cp: ControlPlane, web_port: int = 8080) -> None:
    """The demo's TrafficPermissions and gateway route, written once (a user's later changes are
    kept); the gateway's listener follows the web port each time."""
    from meshline.core.errors import NotFound

    text = (Path(__file__).parent / "resources.yaml").read_text()
    gateway, route = gateway_documents(web_port)
    for doc in [*yaml.safe_load_all(text), route, gateway]:
        res = cp.kinds.decode(doc)
        try:
            stored = await cp.store.get(res.key)
        except NotFound:
            await cp.store.create(res)
            continue
        if doc is gateway and stored.spec != res.spec:
            await cp.store.put(res)


async def run_up(settings: Settings, web_port: int, outbound_base: int, build: Callable[[Settings], ControlPlane],
                 say: Callable[[str], None], status: Callable[[str], None],
                 token_for: Callable[[ControlPlane, str], str | None] | None = None,
                 ready: Callable[[ControlPlane, Demo, dict[str, object], float], None] | None = None,
                 stop_event: asyncio.Event | None = None, broken_v2: bool = False) -> None:
    started = time.monotonic()
    demo = Demo(settings, web_port, outbound_base, say, broken_v2=broken_v2)
    demo.check_ports()
    stop = stop_event or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    status("Starting the control plane")
    cp = build(settings)
    await cp.start()
    try:
        if token_for is not None:
            demo.token_for = lambda service: token_for(cp, service)
        await apply_demo_resources(cp, web_port)
        xds_host = settings.xds_address.rpartition(":")[0] or "127.0.0.1"
        status("Starting the demo: inventory, orders v1 + v2, web (each with its sidecar) and the gateway edge")
        demo.start_agents(cp.api_url, f"{xds_host}:{cp.xds_port}")
        status("Waiting for the sidecars to be ready, then for a request through edge -> web -> orders -> inventory")
        await wait_all_ready(cp, [s.name for s in demo_services(web_port, outbound_base)], stop, demo)
        first = await demo.wait_first_request(stop)
        if first is not None and ready is not None:
            ready(cp, demo, first, time.monotonic() - started)
        while not stop.is_set():
            await wait_set(stop, SUPERVISE_EVERY)
            if not stop.is_set():
                demo.supervise(time.monotonic())
    finally:
        status("Stopping the demo and the control plane")
        await asyncio.get_running_loop().run_in_executor(None, demo.stop)
        await cp.stop()
