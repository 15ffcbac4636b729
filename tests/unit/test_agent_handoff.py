"""The in-place upgrade's handoff files and command lines (agent/handoff.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from meshline.agent import handoff
from meshline.core.errors import MeshlineError


def state() -> handoff.HandoffState:
    return handoff.HandoffState(from_version="0.1.0", app_pid=12, envoy_pid=34, envoy_epoch=0, envoy_base_id=99,
                                inbound_port=20001, metrics_port=None, ready_for_traffic=True,
                                xds_host="127.0.0.1", xds_port=15678, started_at=1.5)  # fmt: skip


def test_the_state_is_private_and_read_once(tmp_path: Path) -> None:
    path = handoff.write_state(tmp_path, state())
    assert path.stat().st_mode & 0o077 == 0
    env = {handoff.HANDOFF_ENV: str(path), "OTHER": "x"}
    assert handoff.take_state(env) == state()
    assert handoff.HANDOFF_ENV not in env and not path.exists()
    assert handoff.take_state(env) is None  # an ordinary start


def test_a_missing_or_foreign_state_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(MeshlineError, match="missing or unreadable"):
        handoff.take_state({handoff.HANDOFF_ENV: str(tmp_path / "nope.json")})
    (tmp_path / "h.json").write_text('{"from_version": "0.9.0", "a_field_of_a_later_version": 1}')
    with pytest.raises(MeshlineError, match="does not fit this version"):  # required fields missing
        handoff.take_state({handoff.HANDOFF_ENV: str(tmp_path / "h.json")})
    path = handoff.write_state(tmp_path, state())
    path.write_text(path.read_text().replace("{", '{"a_field_of_a_later_version": 1, ', 1))
    assert handoff.take_state({handoff.HANDOFF_ENV: str(path)}) == state()  # an unknown field is left out


def test_requests_and_status(tmp_path: Path) -> None:
    assert handoff.take_request(tmp_path) is None
    handoff.write_request(tmp_path, ["/opt/new/bin/meshline"])
    assert handoff.take_request(tmp_path) == ["/opt/new/bin/meshline"]
    assert handoff.take_request(tmp_path) is None  # taken
    handoff.write_status(tmp_path, "done", "upgraded", pid=7)
    status = handoff.read_status(tmp_path)
    assert status is not None and status["state"] == "done" and status["pid"] == 7


def test_the_new_command_keeps_the_meshline_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "orig_argv", ["/venv/bin/python", "-m", "meshline", "run", "--service", "a", "--", "app"])
    monkeypatch.setattr(sys, "argv", ["/src/meshline/__main__.py", "run", "--service", "a", "--", "app"])
    assert handoff.own_program() == [sys.executable, "-m", "meshline"]
    assert handoff.new_command(None) == [sys.executable, "-m", "meshline", "run", "--service", "a", "--", "app"]
    assert handoff.new_command(["/new/bin/meshline"]) == ["/new/bin/meshline", "run", "--service", "a", "--", "app"]


def test_parse_version() -> None:
    assert handoff.parse_version("meshline, version 0.2.0\n") == "0.2.0"
    assert handoff.parse_version("Traceback ...") is None
