"""A secured mesh for the attack tests on the control plane's gRPC port: auth on, strict mTLS,
real sidecars (``web -> orders``), and an attacker's view of the xDS port (its address and the
public CA that verifies it; no credential unless a test hands one out)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from meshline.testing.mesh import MeshHarness, Sidecar
from meshline.testing.servers import HttpTestServer


@dataclass
class World:
    harness: MeshHarness
    web: Sidecar
    orders: Sidecar
    app: HttpTestServer

    @property
    def xds(self) -> str:
        return f"127.0.0.1:{self.harness.xds_port}"

    def channel(self) -> grpc.Channel:
        """A TLS channel to the xDS port, as anyone on the network can open (the CA is public)."""
        ca = (self.harness.data_dir / "cp-ca.pem").read_bytes()
        return grpc.secure_channel(self.xds, grpc.ssl_channel_credentials(ca))

    def token(self, kind: str = "dataplane", **scope: str) -> str:
        issued = self.harness.api.request("POST", "/api/v1/tokens", json={"kind": kind, "ttl": "1h", **scope})
        return str(issued["token"])

    def on_loop(self, fn: Callable[[Any], Any]) -> Any:
        """Run ``fn(control_plane)`` on the control plane's loop (to read its state)."""
        cp = self.harness.control_plane
        assert cp is not None
        return cp.call(lambda: fn(cp.cp))


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def stop_all(sidecars: list[Sidecar]) -> None:
    threads = [threading.Thread(target=sc.stop) for sc in sidecars]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)


@contextmanager
def secured_world(tmp: Path, env: dict[str, str] | None = None) -> Iterator[World]:
    """``env``: control-plane settings from the environment (e.g. short timeouts)."""
    with pytest.MonkeyPatch.context() as mp:
        for k, v in (env or {}).items():
            mp.setenv(k, v)
        https = os.environ.get("MESHLINE_API_TLS") == "on"
        harness = MeshHarness(tmp, mtls="strict", auth=True, mesh_spec={"defaultPermission": "allow"},
                              api_scheme="https" if https else "http")
        with HttpTestServer("orders-app") as app, harness:
            orders = harness.sidecar("orders", app.port, wait=False)
            web = harness.sidecar("web", 1, upstreams=["orders"], wait=False)
            try:
                for sc in (orders, web):
                    harness.wait_ready(sc)
                yield World(harness, web, orders, app)
            finally:
                stop_all(harness.sidecars)
