"""A mesh across test hosts: the control plane on a host of its own, agents on others.

    with TestNetwork(tmp_path) as net:
        mesh = HostMesh(net, tmp_path).start()       # control plane on host "cp" (HTTPS API)
        b = net.host("b")
        mesh.run(b, "orders", 8080, ["python3", "-m", "meshline.testing.apps", "http", ...],
                 transparent=True)
        mesh.apply("kind: TrafficPermission ...")

Everything is a real process started in a test host (``Host.spawn``): the control plane,
each ``meshline run`` agent with its Envoy and app. The test process itself is outside
every namespace, so it talks to the control plane by running the CLI inside the cp host
(:meth:`HostMesh.cli`), with the API's CA and the admin token the control plane wrote.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshline.testing.mesh import wait_until
from meshline.testing.netns import Host, HostProcess, TestNetwork

API_PORT, XDS_PORT = 15681, 15678


@dataclass
class LiveTap:
    """A running ``meshline tap`` (:meth:`HostMesh.live_tap`)."""

    proc: subprocess.Popen[str]
    banner: list[str] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)


class HostMesh:
    __test__ = False

    def __init__(self, net: TestNetwork, work: Path, mtls: str = "strict", mesh_spec: Mapping[str, Any] | None = None) -> None:
        self.net = net
        self.work = work
        self.mtls = mtls
        self.mesh_spec = dict(mesh_spec or {})
        self.cp: Host | None = None
        self.cp_proc: HostProcess | None = None
        self.data_dir = work / "cp-data"
        self.state_dir = work / "capture-state"
        self.agents: dict[str, HostProcess] = {}

    @property
    def api_url(self) -> str:
        assert self.cp is not None
        return f"https://{self.cp.address}:{API_PORT}"

    @property
    def ca_file(self) -> Path:
        return self.data_dir / "cp-ca.pem"

    def env(self) -> dict[str, str]:
        return {**os.environ, "MESHLINE_API": self.api_url, "MESHLINE_CA_FILE": str(self.ca_file),
                "MESHLINE_TOKEN_FILE": str(self.data_dir / "admin.token"),
                "MESHLINE_CAPTURE_STATE_DIR": str(self.state_dir), "MESHLINE_CONFIG": str(self.work / "cli.yaml")}  # fmt: skip

    def start(self) -> HostMesh:
        self.cp = self.net.hosts.get("cp") or self.net.host("cp")
        # its CLI context goes to the test's own config file, never the user's
        env = {**os.environ, "MESHLINE_DATA_DIR": str(self.data_dir), "MESHLINE_CONFIG": str(self.work / "cli.yaml")}
        self.cp_proc = self.cp.spawn("control-plane", [
            sys.executable, "-m", "meshline", "control-plane", "--data-dir", str(self.data_dir),
            "--api-address", f"{self.cp.address}:{API_PORT}", "--xds-address", f"{self.cp.address}:{XDS_PORT}",
        ], env=env)  # fmt: skip
        proc = self.cp_proc
        wait_until(lambda: "control plane ready" in proc.log() or not proc.alive(), 30, what="the control plane")
        assert proc.alive(), proc.log()
        spec = {"mtls": {"mode": self.mtls}, **self.mesh_spec}
        self.apply(json.dumps({"kind": "Mesh", "name": "default", "spec": spec}))
        return self

    def cli(self, *args: str, input: str | None = None, check: bool = True, host: Host | None = None) -> str:
        """Run ``meshline ARGS`` in a test host (the cp host by default) against this control plane."""
        where = host or self.cp
        assert where is not None
        done = where.run([sys.executable, "-m", "meshline", *args], env=self.env(), input=input, timeout=60)
        if check:
            assert done.returncode == 0, f"meshline {' '.join(args)} failed: {done.stdout}{done.stderr}"
        return done.stdout

    @contextlib.contextmanager
    def live_tap(self, *args: str, timeout: float = 30) -> Iterator[LiveTap]:
        """``meshline tap ARGS -o json`` running on the cp host, yielded once the control plane
        confirmed it (its sidecars stream what it watches); the records are read at exit."""
        assert self.cp is not None
        proc = subprocess.Popen(self.cp.command([sys.executable, "-m", "meshline", "tap", *args, "-o", "json"]),
                                env=self.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        tap = LiveTap(proc)
        try:
            assert proc.stderr is not None
            started = threading.Thread(target=lambda: tap.banner.append(proc.stderr.readline() if proc.stderr else ""))
            started.start()
            started.join(timeout)
            assert tap.banner and tap.banner[0].startswith("tapping"), f"the tap did not start: {tap.banner}"
            yield tap
            out, err = proc.communicate(timeout=timeout)
            tap.records = [json.loads(line) for line in out.splitlines() if line.strip()]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()

    def recent(self, service: str, replay: int = 1000) -> list[dict[str, Any]]:
        """What ``meshline tap SERVICE --replay N`` shows first: the control plane's recent
        records of the service (every failure and connection; successes as sampled)."""
        assert self.cp is not None
        url = f"{self.api_url}/api/v1/meshes/default/tap?service={service}&replay={replay}&idle=1"
        token = (self.data_dir / "admin.token").read_text().strip()
        done = self.cp.run(["curl", "-sS", "--cacert", str(self.ca_file), "-H", f"Authorization: Bearer {token}", url],
                           timeout=30)  # fmt: skip
        lines = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
        return [r for r in lines if "time" in r]

    def apply(self, docs: str, wait: bool = False) -> str:
        return self.cli("apply", *(["--wait"] if wait else []), "-f", "-", input=docs)

    def get(self, kind: str, name: str | None = None) -> Any:
        return json.loads(self.cli("get", kind, *([name] if name else []), "-o", "json"))

    def token(self, service: str) -> Path:
        path = self.work / f"{service}.token"
        if not path.exists():
            self.cli("token", "issue", "--kind", "dataplane", "--mesh", "default", "--service", service,
                     "--file", str(path))  # fmt: skip
        return path

    def run(self, host: Host, service: str, port: int, app: Sequence[str], *, transparent: bool = True,
            name: str | None = None, protocol: str | None = None, tags: Mapping[str, str] | None = None,
            extra: Iterable[str] = (), wait: bool = True) -> HostProcess:  # fmt: skip
        """``meshline run [--transparent] ... -- APP`` on ``host`` (no APP: ``meshline dataplane``, the
        app started apart); waits until it takes traffic."""
        name = name or f"{service}-{host.name}"
        command = "run" if app else "dataplane"
        args = [sys.executable, "-m", "meshline", command, "--service", service, "--port", str(port), "--name", name,
                "--api", self.api_url, "--ca-file", str(self.ca_file), "--token-file", str(self.token(service)),
                "--work-dir", str(self.work / "dp" / name), "--drain-seconds", "0"]  # fmt: skip
        if transparent:
            args.append("--transparent")
        if protocol:
            args += ["--protocol", protocol]
        for k, v in (tags or {}).items():
            args += ["--tag", f"{k}={v}"]
        args += [*extra, *(["--", *app] if app else [])]
        env = {k: v for k, v in self.env().items() if k not in ("MESHLINE_TOKEN_FILE", "MESHLINE_API")}
        proc = host.spawn(f"agent-{name}", args, env=env)
        self.agents[name] = proc
        if wait:
            self.wait_serving(proc, name)
        return proc

    def wait_serving(self, proc: HostProcess, name: str, ready: str = "is ready for traffic") -> None:
        wait_until(lambda: f"{name} {ready}" in proc.log() or not proc.alive(), 60,
                   what=f"{name} to take traffic")  # fmt: skip
        assert proc.alive(), proc.log()

    def dataplanes(self) -> dict[str, Any]:
        return {d["name"]: d for d in self.get("dataplanes")}

    def wait_endpoints(self, service: str, count: int) -> None:
        """Until ``count`` ready instances of ``service`` are registered."""
        def ready() -> bool:
            dps = self.dataplanes().values()
            return sum(1 for d in dps if d["spec"].get("ready") and any(
                i["tags"].get("service") == service for i in d["spec"]["inbound"])) >= count  # fmt: skip

        wait_until(ready, 30, interval=0.2, what=f"{count} instances of {service}")

    def stop(self) -> None:
        for proc in reversed(list(self.agents.values())):
            proc.stop(timeout=20)
        if self.cp_proc is not None:
            self.cp_proc.stop(timeout=20)
