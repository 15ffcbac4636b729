"""`meshline apply --wait`: returns once every affected sidecar has ACKed, or names the ones that did not."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from meshline.testing.mesh import MeshHarness
from meshline.testing.servers import HttpTestServer


def timeout_doc(seconds: int) -> str:
    return (f"kind: Timeout\nmesh: default\nname: web-to-orders\nspec:\n  sources: [{{match: {{service: web}}}}]\n"
            f"  destinations: [{{match: {{service: orders}}}}]\n  conf: {{http: {{requestTimeout: {seconds}s}}}}\n")


def apply_wait(mesh: MeshHarness, doc: str, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MESHLINE_API": mesh.api_url, "MESHLINE_TOKEN": mesh.admin_token() or ""}
    return subprocess.run([sys.executable, "-m", "meshline", "apply", "--wait", *extra, "-f", "-"], input=doc,
                          capture_output=True, text=True, env=env, timeout=60)


def test_apply_wait_reports_acks_and_names_dataplanes_that_did_not(mesh: MeshHarness) -> None:
    with HttpTestServer("orders-1") as orders:
        mesh.sidecar("orders", orders.port)
        web = mesh.sidecar("web", 1, upstreams=["orders"])
        done = apply_wait(mesh, timeout_doc(5))
        assert done.returncode == 0, done.stderr
        count = re.search(r"^(\d+) dataplanes? ACKed the change in \d+\.\ds$", done.stdout, re.M)
        assert count is not None and int(count.group(1)) >= 1, done.stdout
        # the new timeout is live in web's sidecar the moment apply returns
        dump = web.admin("/config_dump?resource=dynamic_route_configs").text
        assert '"timeout": "5s"' in dump

        again = apply_wait(mesh, timeout_doc(5))
        assert again.returncode == 0 and "no dataplane's configuration changed" in again.stdout

        # a registered dataplane whose sidecar is not connected cannot ACK
        mesh.api.put({"kind": "Dataplane", "mesh": "default", "name": "web-ghost",
                      "spec": {"address": "127.0.0.1", "inbound": [{"port": 1, "servicePort": 3, "tags": {"service": "web"}}],
                               "outbound": [{"port": 2, "service": "orders"}]}})
        failed = apply_wait(mesh, timeout_doc(7), "--timeout", "3")
        assert failed.returncode == 1, failed.stdout
        assert re.search(r"of \d+ affected dataplanes did not ACK within 3s: web-ghost: offline", failed.stderr), \
            failed.stderr
