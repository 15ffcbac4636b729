"""Multi-zone on test hosts: a global control plane, zones with their control plane, ingress
and workloads, each on a host of its own (network namespaces, see netns.py).

    with TestNetwork(tmp_path) as net:
        world = ZoneWorld(net, tmp_path).start()           # host "global"
        a = world.zone("zone-a")                           # hosts "cp-a", "in-a"
        world.run(a, net.host("wa"), "web", 8080, app, upstreams=["orders=9001"])
        world.apply("kind: TrafficPermission ...")         # at global

Every piece is a real process (control planes, agents with their Envoys, apps). The CLI runs
inside a host against the control plane it names, with that control plane's CA and admin token.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshline.testing.mesh import wait_until
from meshline.testing.netns import Host, HostProcess, TestNetwork

API_PORT, XDS_PORT, INGRESS_PORT = 15681, 15678, 10001


@dataclass
class ControlPlaneHost:
    name: str
    host: Host
    data_dir: Path
    args: list[str]
    proc: HostProcess | None = None

    @property
    def api_url(self) -> str:
        return f"https://{self.host.address}:{API_PORT}"

    @property
    def ca_file(self) -> Path:
        return self.data_dir / "cp-ca.pem"


@dataclass
class Zone:
    name: str
    cp: ControlPlaneHost
    ingress_host: Host
    ingress: HostProcess | None = None
    agents: dict[str, HostProcess] = field(default_factory=dict)


class ZoneWorld:
    __test__ = False

    def __init__(self, net: TestNetwork, work: Path, poll: float = 3.0) -> None:
        self.net = net
        self.work = work
        self.poll = poll
        self.glob: ControlPlaneHost | None = None
        self.zones: dict[str, Zone] = {}

    # -- control planes -----------------------------------------------------------------
    def _env(self, cp: ControlPlaneHost) -> dict[str, str]:
        return {**os.environ, "MESHLINE_API": cp.api_url, "MESHLINE_CA_FILE": str(cp.ca_file),
                "MESHLINE_TOKEN_FILE": str(cp.data_dir / "admin.token"),
                "MESHLINE_CAPTURE_STATE_DIR": str(self.work / "capture-state"),
                "MESHLINE_CONFIG": str(self.work / f"cli-{cp.name}.yaml")}  # fmt: skip

    def _spawn_cp(self, cp: ControlPlaneHost) -> None:
        env = {**os.environ, "MESHLINE_DATA_DIR": str(cp.data_dir), "MESHLINE_CONFIG": str(self.work / f"cli-{cp.name}.yaml"),
               "MESHLINE_ZONE_POLL_S": f"{self.poll:g}"}  # fmt: skip
        cp.proc = cp.host.spawn("control-plane", [
            sys.executable, "-m", "meshline", "control-plane", "--data-dir", str(cp.data_dir),
            "--api-address", f"{cp.host.address}:{API_PORT}", "--xds-address", f"{cp.host.address}:{XDS_PORT}",
            *cp.args,
        ], env=env)  # fmt: skip
        proc = cp.proc
        wait_until(lambda: "control plane ready" in proc.log() or not proc.alive(), 60, what=f"control plane {cp.name}")
        assert proc.alive(), proc.log()

    def start(self, mesh_spec: Mapping[str, Any] | None = None) -> ZoneWorld:
        host = self.net.host("global")
        self.glob = ControlPlaneHost("global", host, self.work / "global", ["--mode", "global", "--zone", "global"])
        self._spawn_cp(self.glob)
        spec = {"mtls": {"mode": "strict"}, **(mesh_spec or {})}
        self.apply(json.dumps({"kind": "Mesh", "name": "default", "spec": spec}))
        return self

    def stop_global(self) -> None:
        assert self.glob is not None and self.glob.proc is not None
        self.glob.proc.stop(timeout=20)

    def start_global(self) -> None:
        assert self.glob is not None
        self._spawn_cp(self.glob)

    def zone_token(self, zone: str) -> Path:
        path = self.work / f"{zone}.zone-token"
        if not path.exists():
            self.cli("token", "issue", "--kind", "zone", "--zone", zone, "--file", str(path))
        return path

    def zone(self, name: str, token: Path | None = None, ingress: bool = True) -> Zone:
        """A zone: its control plane (synced with global) and, with ``ingress``, its zone ingress."""
        assert self.glob is not None
        short = name.rsplit("-", 1)[-1]
        cp = ControlPlaneHost(name, self.net.host(f"cp-{short}"), self.work / name, [
            "--mode", "zone", "--zone", name, "--global", self.glob.api_url,
            "--zone-token-file", str(token or self.zone_token(name)), "--global-ca-file", str(self.glob.ca_file),
        ])  # fmt: skip
        self._spawn_cp(cp)
        zone = self.zones[name] = Zone(name, cp, self.net.host(f"in-{short}"))
        if ingress:
            self.wait_mesh(zone)
            self.start_ingress(zone)
        return zone

    def wait_mesh(self, zone: Zone, mesh: str = "default") -> None:
        wait_until(lambda: any(m["name"] == mesh for m in self.get("meshes", cp=zone.cp)), 60, interval=0.3,
                   what=f"mesh {mesh} in {zone.name}")  # fmt: skip

    def start_ingress(self, zone: Zone) -> HostProcess:
        h = zone.ingress_host
        name = f"ingress-{zone.name}"
        proc = h.spawn("zone-ingress", [
            sys.executable, "-m", "meshline", "zone-ingress", "--mesh", "default", "--address", h.address,
            "--port", str(INGRESS_PORT), "--name", name, "--api", zone.cp.api_url, "--ca-file", str(zone.cp.ca_file),
            "--token-file", str(self.token(zone, "zone-ingress")), "--work-dir", str(self.work / "dp" / name),
        ], env={k: v for k, v in self._env(zone.cp).items() if k not in ("MESHLINE_TOKEN_FILE", "MESHLINE_API")})  # fmt: skip
        zone.ingress = proc
        wait_until(lambda: f"{name} is ready for traffic" in proc.log() or not proc.alive(), 60, what=f"{name}")
        assert proc.alive(), proc.log()
        return proc

    # -- the CLI ---------------------------------------------------------------------------
    def cli(self, *args: str, input: str | None = None, check: bool = True, cp: ControlPlaneHost | None = None) -> str:
        """``meshline ARGS`` in the control plane's own host (global's by default)."""
        where = cp or self.glob
        assert where is not None
        done = where.host.run([sys.executable, "-m", "meshline", *args], env=self._env(where), input=input, timeout=60)
        if check:
            assert done.returncode == 0, f"meshline {' '.join(args)} failed: {done.stdout}{done.stderr}"
        return done.stdout + (done.stderr if not check else "")

    def apply(self, docs: str, wait: bool = False, cp: ControlPlaneHost | None = None) -> str:
        return self.cli("apply", *(["--wait"] if wait else []), "-f", "-", input=docs, cp=cp)

    def get(self, kind: str, cp: ControlPlaneHost | None = None) -> Any:
        return json.loads(self.cli("get", kind, "-o", "json", cp=cp))

    def token(self, zone: Zone, service: str) -> Path:
        path = self.work / f"{zone.name}-{service}.token"
        if not path.exists():
            self.cli("token", "issue", "--kind", "dataplane", "--mesh", "default", "--service", service,
                     "--file", str(path), cp=zone.cp)  # fmt: skip
        return path

    # -- workloads ---------------------------------------------------------------------------
    def run(self, zone: Zone, host: Host, service: str, port: int, app: Sequence[str], *, name: str | None = None,
            upstreams: Iterable[str] = (), protocol: str = "http", wait: bool = True,
            transparent: bool = False) -> HostProcess:  # fmt: skip
        """``meshline run`` of ``service`` in ``zone`` on ``host``. Explicit mode: the app on
        127.0.0.1:``port``, the sidecar's inbound on the host's address at ``port`` + 1000;
        ``transparent``: capture rules on the host (the app binds 0.0.0.0:``port``)."""
        name = name or f"{service}-{host.name}"
        ports = ["--transparent"] if transparent else ["--inbound-port", str(port + 1000), "--address", host.address]
        args = [sys.executable, "-m", "meshline", "run" if app else "dataplane", "--service", service,
                "--port", str(port), *ports, "--name", name,
                "--api", zone.cp.api_url, "--ca-file", str(zone.cp.ca_file),
                "--token-file", str(self.token(zone, service)), "--work-dir", str(self.work / "dp" / name),
                "--drain-seconds", "0", "--protocol", protocol]  # fmt: skip
        for u in upstreams:
            args += ["--upstream", u]
        args += ["--", *app] if app else []
        env = {k: v for k, v in self._env(zone.cp).items() if k not in ("MESHLINE_TOKEN_FILE", "MESHLINE_API")}
        proc = host.spawn(f"agent-{name}", args, env=env)
        zone.agents[name] = proc
        if wait:
            wait_until(lambda: f"{name} is ready for traffic" in proc.log() or not proc.alive(), 60,
                       what=f"{name} to take traffic")  # fmt: skip
            assert proc.alive(), proc.log()
        return proc

    def zones_at_global(self) -> dict[str, Any]:
        return {z["name"]: z for z in self.get("zones")}

    def stop(self) -> None:
        for zone in self.zones.values():
            for proc in reversed(list(zone.agents.values())):
                proc.stop(timeout=20)
            if zone.ingress is not None:
                zone.ingress.stop(timeout=20)
        for zone in self.zones.values():
            if zone.cp.proc is not None:
                zone.cp.proc.stop(timeout=20)
        if self.glob is not None and self.glob.proc is not None:
            self.glob.proc.stop(timeout=20)


def http_app(name: str, port: int) -> list[str]:
    return [sys.executable, "-m", "meshline.testing.apps", "http", "--name", name, "--port", str(port)]
