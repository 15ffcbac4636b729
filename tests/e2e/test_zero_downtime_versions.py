"""The version compatibility rule (core/versions.py, docs/operations.md) with a real control
plane and real agents: a control plane serves agents within one minor version, older or newer,
and refuses the others clearly, at registration and on the xDS stream.

The control plane runs in this process, so the test gives it another version by setting
``meshline.__version__`` (read when asked); the agents are subprocesses of this installation.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2

import meshline
from meshline.core import versions
from meshline.core.resource import KindRegistry
from meshline.testing.mesh import MeshHarness, wait_until
from meshline.testing.servers import HttpTestServer

OURS = meshline.__version__
MAJOR, MINOR = (int(p) for p in OURS.split(".")[:2])
ONE_NEWER = f"{MAJOR}.{MINOR + 1}.0"  # its agents (ours) are one minor older: served
TWO_NEWER = f"{MAJOR}.{MINOR + 2}.3"  # its agents are two minors older: refused
ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"


@pytest.fixture
def control_plane_version(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    version = str(request.param)
    monkeypatch.setattr(meshline, "__version__", version)
    return version


@pytest.fixture
def mesh(tmp_path: Path, control_plane_version: str) -> Iterator[MeshHarness]:
    with MeshHarness(tmp_path, mtls="strict", auth=True, mesh_spec={"defaultPermission": "allow"}) as m:
        yield m


@pytest.mark.parametrize("control_plane_version", [ONE_NEWER], indirect=True)
def test_an_agent_one_minor_version_older_is_served(mesh: MeshHarness, control_plane_version: str) -> None:
    assert mesh.api.get("/api/v1/health")["version"] == control_plane_version
    with HttpTestServer("orders-a") as app:
        orders = mesh.sidecar("orders", app_port=app.port)  # waits until its Envoy is ready
        assert orders.ready()
        wait_until(lambda: mesh.dataplane_status("orders-1").get("agentVersion") == OURS, 15,
                   what="the agent's version in its status")  # fmt: skip


@pytest.mark.parametrize("control_plane_version", [TWO_NEWER], indirect=True)
def test_an_agent_two_minor_versions_older_is_refused_clearly(mesh: MeshHarness, control_plane_version: str) -> None:
    with HttpTestServer("orders-a") as app:
        orders = mesh.sidecar("orders", app_port=app.port, wait=False)
        wait_until(lambda: orders.proc.poll() is not None, 60, what="the agent to give up")
    log = orders.log()
    assert orders.proc.returncode != 0, log
    expected = f"agent {OURS} is too old for control plane {control_plane_version}"
    assert expected in log, log
    assert f"upgrade this agent to {MAJOR}.{MINOR + 1} or later" in log, log
    assert "Envoy is ready" not in log, log  # refused before anything started


@pytest.mark.parametrize("control_plane_version", [TWO_NEWER], indirect=True)
def test_an_envoy_reporting_an_old_agent_version_is_refused_on_the_xds_stream(
    mesh: MeshHarness, control_plane_version: str
) -> None:
    """What stops an agent that skips the registration check: its Envoy's ADS stream is ended
    with FAILED_PRECONDITION and the rule's message; one reporting a supported version is served."""
    mesh.api.put({"kind": "Dataplane", "mesh": "default", "name": "orders-1",
                  "spec": {"address": "127.0.0.1", "inbound": [{"port": 20001, "servicePort": 20002,
                                                                "tags": {"service": "orders"}}]}})  # fmt: skip
    token = mesh.dataplane_token("orders", name="orders-1")
    ca = (mesh.data_dir / "cp-ca.pem").read_bytes()

    def first_answer(agent_version: str) -> tuple[grpc.StatusCode | None, str]:
        node = base_pb2.Node(id="default.orders-1", cluster="orders")
        node.metadata.fields[versions.AGENT_VERSION_KEY].string_value = agent_version
        req = discovery_pb2.DiscoveryRequest(node=node, type_url="type.googleapis.com/envoy.config.cluster.v3.Cluster")
        with grpc.secure_channel(f"127.0.0.1:{mesh.xds_port}", grpc.ssl_channel_credentials(ca)) as channel:
            call = channel.stream_stream(ADS, request_serializer=lambda m: m.SerializeToString(),
                                         response_deserializer=discovery_pb2.DiscoveryResponse.FromString)  # fmt: skip
            stream = call(iter([req]), metadata=[("authorization", f"Bearer {token}")], timeout=10)
            try:
                answer = next(stream)
            except grpc.RpcError as err:
                return err.code(), str(err.details())
            stream.cancel()
            return None, answer.type_url

    code, message = first_answer(OURS)
    assert code == grpc.StatusCode.FAILED_PRECONDITION, (code, message)
    assert f"agent {OURS} is too old for control plane {control_plane_version}" in message, message
    served, type_url = first_answer(f"{MAJOR}.{MINOR + 1}.4")  # one minor older than it
    assert served is None and type_url.endswith("Cluster"), (served, type_url)
    newer, message = first_answer(f"{MAJOR}.{MINOR + 4}.0")
    assert newer == grpc.StatusCode.FAILED_PRECONDITION and "upgrade the control plane first" in message, message


# -- meshline upgrade-check --------------------------------------------------------------------

TIMEOUT = {"kind": "Timeout", "mesh": "default", "name": "web-to-orders",
           "spec": {"sources": [{"match": {"service": "web"}}], "destinations": [{"match": {"service": "orders"}}],
                    "conf": {"http": {"requestTimeout": "5s"}}}}  # fmt: skip


def upgrade_check(mesh: MeshHarness, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MESHLINE_TOKEN": mesh.admin_token() or ""}
    return subprocess.run([sys.executable, "-m", "meshline", "--api", mesh.api_url, "upgrade-check", *args],
                          capture_output=True, text=True, env=env, timeout=60)  # fmt: skip


@pytest.mark.parametrize("control_plane_version", [OURS], indirect=True)
def test_upgrade_check_lists_agents_by_version_and_those_an_upgrade_would_refuse(
    mesh: MeshHarness, control_plane_version: str
) -> None:
    with HttpTestServer("orders-a") as app:
        mesh.sidecar("orders", app_port=app.port)
        mesh.sidecar("orders", app_port=app.port)
        mesh.api.put(TIMEOUT)
        wait_until(lambda: all(mesh.dataplane_status(n).get("agentVersion") == OURS for n in ("orders-1", "orders-2")),
                   15, what="the agents' versions in their status")  # fmt: skip
        ok = upgrade_check(mesh, "--to", f"{MAJOR}.{MINOR + 1}.0")
        print(ok.stdout)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert re.search(rf"{re.escape(OURS)}\s+2\s+2\s+served", ok.stdout), ok.stdout
        assert "would be rejected" in ok.stdout and ": 0 would be rejected" in ok.stdout, ok.stdout
        assert "compatible: upgrading the control plane" in ok.stdout, ok.stdout

        bad = upgrade_check(mesh, "--to", TWO_NEWER)
        print(bad.stdout)
        assert bad.returncode == 1, bad.stdout + bad.stderr
        assert f"REFUSED: agent {OURS} is too old for control plane {TWO_NEWER}" in bad.stdout, bad.stdout
        assert "default/orders-1" in bad.stdout and "default/orders-2" in bad.stdout, bad.stdout
        assert "incompatible: upgrade 2 agent(s) first" in bad.stdout, bad.stdout

        as_json = json.loads(upgrade_check(mesh, "--to", TWO_NEWER, "-o", "json").stdout)
        assert as_json["compatible"] is False and as_json["agents"][0]["version"] == OURS
        assert as_json["resourcesChecked"] >= 4  # the mesh, two dataplanes, the Timeout

        nonsense = upgrade_check(mesh, "--to", "latest")
        assert nonsense.returncode != 0 and "is not a version" in nonsense.stderr, nonsense.stderr


@pytest.mark.parametrize("control_plane_version", [OURS], indirect=True)
def test_upgrade_check_names_stored_resources_the_new_kinds_would_reject(
    mesh: MeshHarness, control_plane_version: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As a newer installation would see them: one whose Timeout checks are stricter (every
    Timeout rejected) and which no longer knows RateLimit."""
    from click.testing import CliRunner

    from meshline.cli import upgrade_check as module
    from meshline.cli.main import cli
    from meshline.core.errors import FieldProblem
    from meshline.kinds import default_kinds

    mesh.api.put(TIMEOUT)
    mesh.api.put({"kind": "RateLimit", "mesh": "default", "name": "orders-limit",
                  "spec": {"sources": [{"match": {"service": "*"}}], "destinations": [{"match": {"service": "orders"}}],
                           "conf": {"local": {"http": {"requests": 100, "interval": "1s"}}}}})  # fmt: skip

    def newer_kinds() -> KindRegistry:
        def stricter(res: object) -> list[FieldProblem]:
            return [FieldProblem("spec.conf.http.requestTimeout", "must be set per route in this version")]

        out = []
        for info in default_kinds():
            if info.kind == "RateLimit":
                continue
            if info.kind == "Timeout":
                info = dataclasses.replace(info, validators=(*info.validators, stricter))
            out.append(info)
        return KindRegistry(out)

    monkeypatch.setattr(module, "installed_kinds", newer_kinds)
    result = CliRunner().invoke(cli, ["--api", mesh.api_url, "--token", mesh.admin_token() or "", "upgrade-check"])
    print(result.output)
    assert result.exit_code == 1, result.output
    assert re.search(r"Timeout\s+default\s+web-to-orders\s+.*requestTimeout: must be set per route", result.output)
    assert re.search(r"RateLimit\s+default\s+orders-limit\s+.*unknown kind 'RateLimit'", result.output), result.output
    assert ": 2 would be rejected" in result.output and "fix or delete 2 resource(s)" in result.output


@pytest.mark.parametrize("control_plane_version", [OURS], indirect=True)
def test_upgrade_check_runs_the_new_cross_resource_checks_and_warns_of_unknown_services(
    mesh: MeshHarness, control_plane_version: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checks across resources (what apply runs against the rest of the mesh) come from the
    installation too: a newer one that refuses a Timeout whose destination has no instance
    names the stored one; a service no dataplane serves is a warning either way."""
    from click.testing import CliRunner

    from meshline.cli import upgrade_check as module
    from meshline.cli.main import cli
    from meshline.core.errors import FieldProblem
    from meshline.render.policy_kind import MeshCheck, MeshView

    mesh.api.put(TIMEOUT)  # names web and orders; neither has a dataplane
    args = ["--api", mesh.api_url, "--token", mesh.admin_token() or "", "upgrade-check"]
    today = CliRunner().invoke(cli, args)
    print(today.output)
    assert today.exit_code == 0, today.output  # this installation's checks accept it: a warning only
    assert "warnings (not incompatible" in today.output, today.output
    assert re.search(r"Timeout\s+default\s+web-to-orders\s+.*service 'orders' has no instances", today.output)

    def needs_an_instance(res: object, view: MeshView) -> list[FieldProblem]:
        served = {s for dp in view.of_kind("Dataplane") for s in dp.spec.services()}  # type: ignore[attr-defined]
        return [] if "orders" in served else [
            FieldProblem("spec.destinations[0]", "a Timeout needs an instance of its destination in this version")]

    installed = module.installed_mesh_checks
    monkeypatch.setattr(module, "installed_mesh_checks",
                        lambda: [*installed(), ("Timeout", MeshCheck(check=needs_an_instance))])  # fmt: skip
    newer = CliRunner().invoke(cli, args)
    print(newer.output)
    assert newer.exit_code == 1, newer.output
    assert re.search(r"Timeout\s+default\s+web-to-orders\s+.*needs an instance of its destination", newer.output)
    assert ": 1 would be rejected" in newer.output and "fix or delete 1 resource(s)" in newer.output
    with HttpTestServer("orders-a") as app:  # once orders has an instance, the same check passes
        mesh.sidecar("orders", app_port=app.port)
        fixed = CliRunner().invoke(cli, args)
        assert fixed.exit_code == 0 and ": 0 would be rejected" in fixed.output, fixed.output
