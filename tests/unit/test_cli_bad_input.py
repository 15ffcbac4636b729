"""Bad input at the CLI: one line that says what is wrong and what to do, a non-zero exit, nothing changed."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshline.controlplane.settings import Settings
from meshline.testing.mesh import ControlPlaneThread
from meshline.testing.servers import free_port


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data = tmp_path_factory.mktemp("cp")
    cp = ControlPlaneThread(Settings(data_dir=data, store_url=f"sqlite:///{data / 'db'}", auth=False,
                                     api_address=f"127.0.0.1:{free_port()}",
                                     xds_address=f"127.0.0.1:{free_port()}"))
    cp.start()
    yield cp.cp.api_url
    cp.stop()


def meshline(api: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MESHLINE_API": api, "MESHLINE_TOKEN": ""}
    return subprocess.run([sys.executable, "-m", "meshline", *args], input=stdin, capture_output=True, text=True,
                          env=env, timeout=60)


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result.stdout
    lines = [line for line in result.stderr.strip().splitlines() if line]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_invalid_yaml(api: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: Mesh\nname: [unclosed\n")
    err = one_line_error(meshline(api, "apply", "-f", str(bad)))
    assert "is not valid YAML at line 3" in err  # where the parser gave up


def test_unknown_kind_lists_the_known_ones(api: str) -> None:
    err = one_line_error(meshline(api, "apply", "-f", "-", stdin="kind: Gizmo\nname: x\n"))
    assert "unknown kind 'Gizmo'" in err and "Dataplane" in err


def test_missing_field_and_wrong_type_name_the_path(api: str) -> None:
    doc = "kind: Dataplane\nmesh: default\nname: a\nspec: {address: 10.0.0.1, inbound: [{port: http, tags: {}}]}\n"
    err = one_line_error(meshline(api, "apply", "-f", "-", stdin=doc))
    assert "spec.inbound[0].port: must be an integer" in err
    assert "spec.inbound[0].tags: must include 'service'" in err


def test_one_bad_document_applies_nothing(api: str) -> None:
    docs = """
kind: Mesh
name: staging
---
kind: Dataplane
mesh: staging
name: ok-1
spec: {address: 10.0.0.1, inbound: [{port: 80, servicePort: 8080, tags: {service: ok}}]}
---
kind: Dataplane
mesh: staging
name: bad-1
spec: {address: nope, inbound: [{port: 80, servicePort: 8080, tags: {service: ok}}]}
"""
    err = one_line_error(meshline(api, "apply", "-f", "-", stdin=docs))
    assert "nothing was applied" in err and "spec.address" in err
    assert "staging" not in meshline(api, "get", "meshes").stdout


def test_duplicate_names_in_one_apply(api: str) -> None:
    doc = "kind: Mesh\nname: twice\n---\nkind: Mesh\nname: twice\n"
    err = one_line_error(meshline(api, "apply", "-f", "-", stdin=doc))
    assert "appears more than once" in err


def test_unknown_mesh_says_how_to_create_it(api: str) -> None:
    doc = "kind: Dataplane\nmesh: nowhere\nname: a\nspec: {address: 10.0.0.1, inbound: [{port: 1, servicePort: 2, tags: {service: a}}]}\n"
    err = one_line_error(meshline(api, "apply", "-f", "-", stdin=doc))
    assert "mesh 'nowhere' does not exist; create it first" in err


def test_missing_resource(api: str) -> None:
    err = one_line_error(meshline(api, "get", "dataplane", "ghost"))
    assert "not found" in err


def test_unreachable_control_plane(tmp_path: Path) -> None:
    err = one_line_error(meshline(f"http://127.0.0.1:{free_port()}", "get", "meshes"))
    assert "cannot reach the control plane" in err and "meshline control-plane" in err


def test_port_in_use_for_the_control_plane(api: str, tmp_path: Path) -> None:
    port = api.rsplit(":", 1)[1]
    env = {**os.environ, "MESHLINE_DATA_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "meshline", "control-plane", "--api-address",
                             f"127.0.0.1:{port}", "--xds-address", f"127.0.0.1:{free_port()}"],
                            capture_output=True, text=True, env=env, timeout=60)
    err = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 1 and err, result.stderr
    assert "cannot listen for the API" in err[0] and "--api-address" in err[0]


def test_the_old_admin_port_option_says_where_the_admin_api_went(api: str) -> None:
    err = one_line_error(meshline(api, "dataplane", "--service", "orders", "--port", "8080", "--admin-port", "9901"))
    assert err.startswith("error: --admin-port:") and "admin.sock" in err and "drop --admin-port" in err


def test_a_document_spells_its_kind_exactly(api: str) -> None:
    for wrong in ("HttpRoute", "HTTPRoutes", "httproute"):
        doc = f"kind: {wrong}\nmesh: default\nname: r\nspec: {{destinations: [{{match: {{service: a}}}}]}}\n"
        err = one_line_error(meshline(api, "apply", "-f", "-", stdin=doc))
        assert f"'{wrong}' is not how a document names a kind; write kind: HTTPRoute" in err
    # the command line takes plurals and any case (one documented rule)
    assert meshline(api, "get", "HTTPRoutes").returncode == 0


def test_unknown_kinds_and_fields_get_the_closest_name(api: str) -> None:
    err = one_line_error(meshline(api, "apply", "-f", "-", stdin="kind: HTTPRout\nmesh: default\nname: r\n"))
    assert "unknown kind 'HTTPRout'; did you mean HTTPRoute?" in err
    doc = ("kind: Timeout\nmesh: default\nname: t\nspec: {destinations: [{match: {service: a}}],"
           " conf: {http: {requestTimeut: 1s}}}\n")
    err = one_line_error(meshline(api, "apply", "-f", "-", stdin=doc))
    assert "spec.conf.http.requestTimeut: is not a known field; did you mean 'requestTimeout'?" in err
    err = one_line_error(meshline(api, "get", "trafficpermision"))
    assert "did you mean TrafficPermission?" in err


def test_a_missing_kind_is_reported_as_missing(api: str) -> None:
    err = one_line_error(meshline(api, "apply", "-f", "-", stdin="mesh: default\nname: x\nspec: {}\n"))
    assert "None" not in err
    assert "document 1 (x): kind: is missing; every document needs one of:" in err and "HTTPRoute" in err


LONG = "orders-to-inventory-a-rather-long-permission-name-number-"


def test_piped_tables_are_not_cut_and_wide_is_a_choice(api: str) -> None:
    docs = "".join(f"---\nkind: TrafficPermission\nmesh: default\nname: {LONG}{i}\nspec:\n"
                   f"  sources: [{{match: {{service: web}}}}]\n  destinations: [{{match: {{service: orders}}}}]\n"
                   f"  action: allow\n" for i in range(3))
    assert meshline(api, "apply", "-f", "-", stdin=docs).returncode == 0
    for extra in ((), ("-o", "wide")):
        out = meshline(api, "get", "trafficpermissions", *extra)
        assert out.returncode == 0, out.stderr
        for i in range(3):
            assert f"{LONG}{i}" in out.stdout, out.stdout  # whole names, three distinct rows
    # on an 80-column terminal, -o wide still prints whole names
    import pty

    code = ("import os, sys; os.environ['COLUMNS'] = '80'; sys.argv = ['meshline', 'get', 'trafficpermissions',"
            " '-o', 'wide']; from meshline.cli.main import main; main()")
    pid, fd = pty.fork()
    if pid == 0:  # the child: stdout is the pseudo-terminal
        os.environ.update({"MESHLINE_API": api, "MESHLINE_TOKEN": ""})
        os.execv(sys.executable, [sys.executable, "-c", code])
    chunks = []
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    os.waitpid(pid, 0)
    text = b"".join(chunks).decode(errors="replace").replace("\r", "")
    assert f"{LONG}0" in text, text
