"""Finding 9: bad input gave 500s, ``/tap`` never ended, the OpenAPI document did not match.

The inputs the fuzzing run found, each sent to a real control plane: a non-integer
``If-Match``, huge durations (``OverflowError``), deeply nested JSON (``RecursionError``), a
4,301-digit integer, ``NaN``. Each is now a 4xx naming the field; nothing is written. A tap
on a mesh that does not exist is a 404, and a tap ends after its idle limit. The OpenAPI
document declares durations as the server takes them (``24h``; no ISO 8601 ``format:
duration`` anywhere) and the status codes seen here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.security.control_plane_process import ControlPlaneProcess, control_plane_process


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlaneProcess]:
    with control_plane_process(Path(tmp_path_factory.mktemp("badinput")) / "cp") as proc:
        yield proc


@pytest.fixture(scope="module")
def client(cp: ControlPlaneProcess) -> Iterator[httpx.Client]:
    with cp.client() as c:
        yield c


def problems(r: httpx.Response) -> list[str]:
    assert r.status_code == 422, (r.status_code, r.text)
    return [p["path"] for p in r.json()["problems"]]


def revision(client: httpx.Client) -> int:
    return int(client.get("/api/v1/health").json()["revision"])


def mesh(spec: dict[str, Any], name: str = "bad") -> dict[str, Any]:
    return {"kind": "Mesh", "name": name, "spec": spec}


@pytest.mark.parametrize("value", ["abc", "1.5", "-3", "9" * 4301, ""])
def test_a_non_integer_if_match_is_422_naming_the_header(client: httpx.Client, value: str) -> None:
    before = revision(client)
    r = client.put("/api/v1/meshes/default", json=mesh({}, "default"), headers={"If-Match": value})
    assert problems(r) == ["If-Match"]
    assert problems(client.delete("/api/v1/meshes/default", headers={"If-Match": value})) == ["If-Match"]
    assert revision(client) == before


@pytest.mark.parametrize("value", ["99999999999999999999h", 1e308, "9" * 400 + "s"])
def test_a_huge_duration_is_422_naming_the_field(client: httpx.Client, value: object) -> None:
    r = client.put("/api/v1/meshes/bad", json=mesh({"mtls": {"certLifetime": value}}))
    paths = problems(r)
    assert any(p.endswith("mtls.certLifetime") for p in paths), paths
    assert "too long" in r.text
    timeout = {"kind": "Timeout", "mesh": "default", "name": "huge",
               "spec": {"destinations": [{"match": {"service": "a"}}], "conf": {"connectTimeout": value}}}  # fmt: skip
    paths = problems(client.post("/api/v1/apply", json={"resources": [timeout]}))
    assert any(p.endswith("conf.connectTimeout") for p in paths), paths


def test_deeply_nested_json_is_422(client: httpx.Client) -> None:
    for depth in (100_000, 1000, 65):
        body = '{"resources": ' + "[" * depth + "]" * depth + "}"
        r = client.post("/api/v1/apply", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 422, (depth, r.status_code, r.text[:200])
        assert "nested" in r.json()["message"]
    r = client.put("/api/v1/meshes/bad", content='{"spec": ' + '{"a": ' * 5000 + "1" + "}" * 5001)
    assert r.status_code == 422 and "nested" in r.json()["message"]


def test_a_4301_digit_integer_and_nan_are_422(client: httpx.Client) -> None:
    before = revision(client)
    for number in ("1" + "0" * 4300, "NaN", "Infinity", "-Infinity"):
        body = '{"kind": "Mesh", "name": "bad", "spec": {"mtls": {"certLifetime": ' + number + "}}}"
        r = client.put("/api/v1/meshes/bad", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 422, (number[:10], r.status_code, r.text[:200])
    assert revision(client) == before


def test_tap_of_a_missing_mesh_is_404_and_a_tap_ends_when_idle(client: httpx.Client) -> None:
    r = client.get("/api/v1/meshes/no-such-mesh/tap")
    assert r.status_code == 404 and "no-such-mesh" in r.json()["message"]
    assert client.get("/api/v1/meshes/no-such-mesh/stats").status_code == 404
    assert client.get("/api/v1/meshes/default/tap", params={"idle": "nope"}).status_code == 422
    with client.stream("GET", "/api/v1/meshes/default/tap", params={"idle": "1"}, timeout=30) as resp:
        assert resp.status_code == 200
        lines = [json.loads(line) for line in resp.iter_lines() if line.strip()]
    assert "tap" in lines[0] and "end" in lines[-1], lines


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, dict):
            yield n
            stack.extend(n.values())
        elif isinstance(n, list):
            stack.extend(n)


def test_the_openapi_document_says_what_the_server_does(client: httpx.Client) -> None:
    doc = client.get("/openapi.json").json()
    assert not [n for n in _walk(doc) if n.get("format") == "duration"], "ISO 8601 durations declared"
    lifetime = doc["components"]["schemas"]["MTLS"]["properties"]["certLifetime"]
    pattern = next(n["pattern"] for n in _walk(lifetime) if "pattern" in n)
    for taken in ("24h", "90m", "1h30m"):
        assert re.match(pattern, taken)
        assert client.put("/api/v1/meshes/fine", json=mesh({"mtls": {"certLifetime": taken}}, "fine")).status_code in (200, 201)
    assert not re.match(pattern, "P1D")
    put = doc["paths"]["/api/v1/meshes/{mesh}"]["put"]["responses"]
    assert {"200", "201", "401", "403", "404", "409", "422"} <= set(put)
    apply = doc["paths"]["/api/v1/apply"]["post"]["responses"]
    assert {"200", "401", "403", "409", "413", "422"} <= set(apply)
    tap = doc["paths"]["/api/v1/meshes/{mesh}/tap"]["get"]
    assert "404" in tap["responses"] and "idle" in {p["name"] for p in tap["parameters"]}
