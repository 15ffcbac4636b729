"""The compatibility rule between control plane and agents (core/versions.py)."""

from __future__ import annotations

import pytest

from meshline.core import versions


@pytest.mark.parametrize(("server", "agent"), [
    ("0.4.0", "0.3.9"), ("0.4.0", "0.4.2"), ("0.4.1", "0.5.0"), ("1.0.0", "1.1.3"), ("0.2.0", None),
    ("0.1.0", None), ("0.4.0-dev1", "0.4.0"),
])  # fmt: skip
def test_within_one_minor_version_is_served(server: str, agent: str | None) -> None:
    assert versions.refusal(server, agent) is None


def test_two_minors_older_is_refused_with_both_versions_and_what_to_do() -> None:
    why = versions.refusal("0.4.0", "0.2.5")
    assert why is not None
    assert "agent 0.2.5 is too old for control plane 0.4.0" in why
    assert "0.3.x to 0.5.x" in why and "upgrade this agent to 0.3 or later" in why


def test_two_minors_newer_and_another_major_are_refused() -> None:
    newer = versions.refusal("0.4.0", "0.6.0")
    assert newer is not None and "upgrade the control plane first" in newer and "agent 0.5 or older" in newer
    assert versions.refusal("1.4.0", "0.4.0") is not None and versions.refusal("0.4.0", "1.4.0") is not None
    assert versions.refusal("0.4.0", None) is not None  # no version sent: 0.1.0


def test_an_unreadable_agent_version_is_refused() -> None:
    why = versions.refusal("0.4.0", "banana")
    assert why is not None and "'banana'" in why


def test_user_agent() -> None:
    assert versions.agent_version_from_user_agent("meshline-agent/0.4.1") == "0.4.1"
    assert versions.agent_version_from_user_agent("python-httpx/0.27") is None
    assert versions.agent_version_from_user_agent(None) is None
