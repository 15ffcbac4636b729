"""A control plane under test: its store seeded with a simulated mesh, the simulator connected.

    with ProcessGroup(logs) as procs:
        cp = ControlPlaneUnderTest(procs, workdir, Topology(1000, 100))
        cp.seed()                  # Mesh + 1,000 Dataplanes straight into the SQLite store
        cp.start()                 # `meshline control-plane` (defaults: auth, xDS over TLS)
        sim = cp.connect()         # 1,000 simulated Envoys, each with its service's token
        ...                        # API writes via cp.api, pushes observed via sim

The control plane runs as a user would run it (``meshline control-plane``, SQLite store,
token auth, xDS over TLS); the simulated dataplanes present per-service dataplane tokens,
so the control plane does the per-stream token check it does for real agents.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from benchmarks import measure, mesh
from benchmarks.adssim.control import Simulator
from benchmarks.controlplane.topology import MESH, Topology, mesh_doc
from benchmarks.procs import ProcessGroup, free_port


def seed_store(data_dir: Path, docs: list[dict[str, Any]]) -> float:
    """Write resources straight into the control plane's SQLite store (before it starts)."""
    from meshline.kinds import default_kinds
    from meshline.store.sqlite import SQLiteStore

    async def write() -> None:
        store = SQLiteStore(default_kinds(), data_dir / "meshline.db")
        await store.start()
        try:
            for doc in docs:
                await store.put(store.kinds.decode(doc))
        finally:
            await store.close()

    began = time.monotonic()
    data_dir.mkdir(parents=True, exist_ok=True)
    asyncio.run(write())
    return time.monotonic() - began


class ControlPlaneUnderTest:
    def __init__(
        self, procs: ProcessGroup, workdir: Path, topology: Topology, env: dict[str, str] | None = None
    ) -> None:
        self.env = env or {}  # for the control plane (e.g. MESHLINE_AUTH=off for plaintext xDS)
        self.procs = procs
        self.workdir = workdir
        self.topology = topology
        self.data_dir = workdir / "cp"
        self.api_port = free_port()
        self.xds_port = free_port()
        self.cp: mesh.ControlPlaneProc | None = None
        self.sim: Simulator | None = None
        self.starts = 0
        self._tokens: dict[str, str | None] = {}

    def seed(self) -> float:
        return seed_store(self.data_dir, [mesh_doc(), *self.topology.all_dataplanes()])

    def start(self) -> float:
        """Start ``meshline control-plane``; the seconds until its API answered."""
        self.starts += 1
        began = time.monotonic()
        self.cp = mesh.start_control_plane(
            self.procs, self.data_dir, name=f"control-plane-{self.starts}",
            api_port=self.api_port, xds_port=self.xds_port, env=self.env,
        )  # fmt: skip
        return time.monotonic() - began

    def stop(self) -> None:
        assert self.cp is not None
        self.procs.stop(self.cp.pid, grace=30)
        self.cp = None

    @property
    def api(self) -> mesh.ControlPlaneProc:
        assert self.cp is not None, "control plane not started"
        return self.cp

    @property
    def pid(self) -> int:
        return self.api.pid

    def token(self, service: str) -> str | None:
        if service not in self._tokens:
            self._tokens[service] = self.api.dataplane_token(service, MESH)
        return self._tokens[service]

    def nodes(self, indexes: range | list[int] | None = None) -> list[dict[str, str | None]]:
        t = self.topology
        chosen = range(t.dataplanes) if indexes is None else indexes
        return [{"node": f"{MESH}.{t.name_of(i)}", "token": self.token(t.service_of(i))} for i in chosen]

    def connect(self, spread: float = 1.0, timeout: float = 120, streams_per_channel: int = 1) -> dict[str, Any]:
        """Start the simulator, open every stream (over ``spread`` s) and wait until all are synced."""
        ca = self.data_dir / "cp-ca.pem"
        self.sim = Simulator(
            self.procs, self.api.xds_address, ca if ca.exists() else None, streams_per_channel=streams_per_channel
        )
        nodes = self.nodes()
        began = time.monotonic()
        self.sim.start(nodes, spread=spread)
        result = self.sim.wait_synced(timeout)
        result["seconds"] = time.monotonic() - began
        return result

    def wait_idle(self, timeout: float = 120, interval: float = 0.25) -> float:
        """Wait until the control plane has stopped working (e.g. its first render, which runs
        after its ports open): two intervals in a row with almost no CPU. Seconds waited."""
        began = time.monotonic()
        quiet, last = 0, self.cpu_seconds()
        while quiet < 2 and time.monotonic() - began < timeout:
            time.sleep(interval)
            now = self.cpu_seconds()
            quiet = quiet + 1 if now - last <= 0.02 else 0
            last = now
        return time.monotonic() - began

    def memory_mb(self) -> dict[str, float]:
        return measure.memory(self.pid).as_dict()

    def cpu_seconds(self) -> float:
        return measure.cpu_seconds(self.pid)
