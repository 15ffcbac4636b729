"""Finding 6: ``apply`` was not all-or-nothing.

The faults: a kill -9 during an apply left 1,299 of 4,000 documents on SQLite and 3 of 5 on
PostgreSQL; a 20,000-document apply kept writing for minutes after its client gave up. Against
a real control plane process:

* kill -9 while it writes a 4,000-document apply (SQLite, and PostgreSQL where there is one):
  after a restart, either none or all of them are there;
* a client that hangs up mid-apply: the control plane stops (says so) and writes nothing;
* one apply is bounded: more documents or bytes than the limits is a 413 naming the limit, and
  nothing is written.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from meshline.testing.mesh import wait_until
from tests.security.control_plane_process import ControlPlaneProcess, control_plane_process

DOCUMENTS = 4000
POSTGRES = os.environ.get("MESHLINE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def timeouts(count: int, tag: str = "t") -> list[dict[str, Any]]:
    return [
        {"kind": "Timeout", "mesh": "default", "name": f"{tag}-{i}",
         "spec": {"destinations": [{"match": {"service": f"svc-{i % 50}"}}],
                  "conf": {"connectTimeout": "2s", "http": {"requestTimeout": f"{1 + i % 9}s"}}}}
        for i in range(count)
    ]  # fmt: skip


def count_timeouts(cp: ControlPlaneProcess) -> int:
    with cp.client() as c:
        r = c.get("/api/v1/meshes/default/timeouts")
        assert r.status_code == 200, r.text
        return len(r.json()["items"])


@pytest.fixture
def postgres_url() -> Iterator[str]:
    psycopg = pytest.importorskip("psycopg")
    try:
        psycopg.connect(POSTGRES, connect_timeout=3).close()
    except psycopg.OperationalError as err:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL not reachable at {POSTGRES}: {err}")
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES}")
    name = f"meshline_apply_{secrets.token_hex(6)}"
    with psycopg.connect(POSTGRES, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlsplit(POSTGRES)._replace(path="/" + name).geturl()
    finally:
        with psycopg.connect(POSTGRES, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def rows_written(data_dir: Path, store_url: str) -> int:
    """Timeouts in the store of record, read directly (not through the dying process)."""
    if store_url:
        import psycopg

        with psycopg.connect(store_url) as conn:
            row = conn.execute("SELECT count(*) FROM resources WHERE kind = 'Timeout'").fetchone()
            return int(row[0]) if row else 0
    db = sqlite3.connect(f"file:{data_dir / 'meshline.db'}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT count(*) FROM resources WHERE kind = 'Timeout'").fetchone()[0])
    except sqlite3.OperationalError:  # no table yet
        return 0
    finally:
        db.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_kill_9_during_a_large_apply_leaves_all_or_nothing(tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    store_url = request.getfixturevalue("postgres_url") if backend == "postgresql" else ""
    data_dir = tmp_path / "cp"
    docs = timeouts(DOCUMENTS)
    with control_plane_process(data_dir, store_url=store_url) as cp:
        outcome: dict[str, Any] = {}

        def send() -> None:
            try:
                with cp.client(timeout=120) as c:
                    outcome["status"] = c.post("/api/v1/apply", json={"resources": docs}).status_code
            except httpx.TransportError as err:
                outcome["error"] = err

        sender = threading.Thread(target=send)
        sender.start()
        # the moment it writes: its own log line (before any write), or (an apply written one
        # by one, as before) the first row showing up in the store
        wait_until(lambda: "apply: writing" in cp.log() or rows_written(data_dir, store_url) > 0,
                   timeout=120, interval=0.005, what="the apply to start writing")  # fmt: skip
        cp.kill()
        sender.join(30)
        assert "status" not in outcome, f"the apply completed ({outcome}) before the kill; nothing was tested"
    with control_plane_process(data_dir, store_url=store_url) as cp:
        assert count_timeouts(cp) in (0, DOCUMENTS)
        # and it still takes the apply
        with cp.client(timeout=120) as c:
            r = c.post("/api/v1/apply", json={"resources": docs})
            assert r.status_code == 200, r.text
        assert count_timeouts(cp) == DOCUMENTS


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlaneProcess]:
    with control_plane_process(Path(tmp_path_factory.mktemp("apply")) / "cp") as proc:
        yield proc


def test_a_client_that_hangs_up_stops_the_apply_and_nothing_is_written(cp: ControlPlaneProcess) -> None:
    before = count_timeouts(cp)
    body = json.dumps({"resources": timeouts(5000, tag="gone")}).encode()
    head = (
        f"POST /api/v1/apply HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {cp.token()}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", cp.api_port)) as s:
        s.sendall(head + body)
    # the client is gone: the control plane notices and stops
    wait_until(lambda: "the client went away" in cp.log(), timeout=60, what="the control plane to stop the apply")
    assert count_timeouts(cp) == before
    with cp.client() as c:
        assert c.get("/api/v1/health").status_code == 200


def test_one_apply_is_bounded_in_documents_and_bytes(cp: ControlPlaneProcess) -> None:
    before = count_timeouts(cp)
    with cp.client() as c:
        r = c.post("/api/v1/apply", json={"resources": timeouts(5001, tag="many")})
        assert r.status_code == 413, r.text
        assert "5001 documents" in r.json()["message"] and "MESHLINE_APPLY_MAX_DOCUMENTS" in r.json()["message"]
        huge = {"resources": [{"kind": "Timeout", "mesh": "default", "name": "huge", "spec": {"x": "a" * (9 << 20)}}]}
        r = c.post("/api/v1/apply", json=huge)
        assert r.status_code == 413, r.text
        assert "MESHLINE_APPLY_MAX_BYTES" in r.json()["message"]
        assert c.get("/api/v1/health").status_code == 200
    assert count_timeouts(cp) == before
