"""A policy naming a service that has no instances (a typo) is applied with a warning naming
the closest known service, and `inspect` repeats it for the dataplanes it applies to."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from meshline.api.client import ApiClient
from meshline.controlplane.settings import Settings
from meshline.testing.mesh import ControlPlaneThread, wait_until
from meshline.testing.servers import free_port

ROUTE = """kind: HTTPRoute
mesh: default
name: to-inventory
spec:
  destinations: [{match: {service: inventory}}]
  rules:
    - backends: [{service: inventroy}]
"""


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data = tmp_path_factory.mktemp("cp")
    cp = ControlPlaneThread(Settings(data_dir=data, store_url=f"sqlite:///{data / 'db'}", auth=False,
                                     api_address=f"127.0.0.1:{free_port()}", xds_address=f"127.0.0.1:{free_port()}"))
    cp.start()
    with ApiClient(cp.cp.api_url, token="") as c:
        for name, service, outbound in (("inventory-1", "inventory", []),
                                        ("web-1", "web", [{"port": 15003, "service": "inventory"}])):
            c.put({"kind": "Dataplane", "mesh": "default", "name": name,
                   "spec": {"address": "127.0.0.1", "inbound": [{"port": free_port(), "servicePort": free_port(),
                            "tags": {"service": service, "protocol": "http"}}], "outbound": outbound}})
    yield cp.cp.api_url
    cp.stop()


def meshline(api: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MESHLINE_API": api, "MESHLINE_TOKEN": ""}
    return subprocess.run([sys.executable, "-m", "meshline", *args], input=stdin, capture_output=True, text=True,
                          env=env, timeout=60)


def test_apply_warns_about_a_backend_with_no_instances(api: str) -> None:
    out = meshline(api, "apply", "-f", "-", stdin=ROUTE)
    assert out.returncode == 0 and "created" in out.stdout, out.stdout  # applied: deploy order must not matter
    warning = " ".join(out.stderr.split())
    assert ("spec.rules[0].backends[0].service: service 'inventroy' has no instances in mesh default;"
            " did you mean 'inventory'?") in warning, out.stderr

    def shown() -> str | None:
        text = meshline(api, "inspect", "dataplane", "web-1").stdout
        return text if "to-inventory" in text else None

    text = " ".join(wait_until(shown, 10, what="the route in inspect").split())
    assert "warning: HTTPRoute to-inventory: spec.rules[0].backends[0].service: service 'inventroy' has no" in text


def test_known_services_give_no_warning(api: str) -> None:
    out = meshline(api, "apply", "-f", "-", stdin=ROUTE.replace("inventroy", "inventory").replace("to-inventory", "ok"))
    assert out.returncode == 0 and "warning" not in out.stderr, out.stderr


def test_an_external_service_is_a_known_destination(api: str) -> None:
    out = meshline(api, "apply", "-f", "-", stdin="""kind: ExternalService
mesh: default
name: partner-api
spec: {host: api.partner.test, port: 443, protocol: tls}
---
kind: Timeout
mesh: default
name: partner-timeout
spec:
  sources: [{match: {service: web}}]
  destinations: [{match: {service: partner-api}}]
  conf: {tcp: {maxConnectionDuration: 30m}}
""")
    assert out.returncode == 0 and "warning" not in out.stderr, out.stderr
    typo = meshline(api, "apply", "-f", "-", stdin="""kind: TrafficPermission
mesh: default
name: web-to-partner
spec:
  sources: [{match: {service: web}}]
  destinations: [{match: {service: partner-apii}}]
  action: allow
""")
    assert "service 'partner-apii' has no instances in mesh default; did you mean 'partner-api'?" in " ".join(
        typo.stderr.split()), typo.stderr
