"""The version compatibility rule between a control plane and its agents (docs/operations.md).

**A control plane serves agents of the same major version whose minor version is at most one
away from its own, older or newer** (0.4 serves 0.3, 0.4 and 0.5; patch releases never
matter). Others are refused, at registration (HTTP 409) and on the xDS stream
(FAILED_PRECONDITION), with a message naming both versions and what to upgrade. So an upgrade
goes one minor version at a time: control plane first or agents first, either works.

Agents say their version in the API's ``User-Agent`` (``meshline-agent/0.4.1``) and in Envoy's
node metadata (``meshline.io/agent-version``). An agent that says none is taken as 0.1.0, the
last release that did not send it.
"""

from __future__ import annotations

import re

import meshline
from meshline.core.errors import MeshlineError

AGENT_VERSION_KEY = "meshline.io/agent-version"  # in Envoy's node metadata
USER_AGENT_PREFIX = "meshline-agent/"
UNSENT = "0.1.0"  # what an agent that sends no version is taken as
MAX_MINOR_SKEW = 1
_VERSION = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?([.+-].*)?$")


class IncompatibleVersion(MeshlineError):
    """An agent outside the compatibility rule."""

    status = 409


def current() -> str:
    """This installation's version, read when asked (not bound at import)."""
    return str(meshline.__version__)


def parse(version: str) -> tuple[int, int, int] | None:
    m = _VERSION.match(version.strip())
    if m is None:
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def minor_of(version: str) -> str:
    v = parse(version)
    return f"{v[0]}.{v[1]}" if v else version


def compatible(server: str, agent: str | None) -> bool:
    return refusal(server, agent) is None


def refusal(server: str, agent: str | None) -> str | None:
    """Why a control plane of version ``server`` does not serve an agent of version ``agent``
    (None: it does), in words an operator can act on."""
    agent = agent or UNSENT
    s, a = parse(server), parse(agent)
    if a is None:
        return (f"this agent reports version {agent!r}, which control plane {server} cannot read;"
                " run a released Meshline agent")  # fmt: skip
    if s is None:
        return None  # a development build of the control plane: no rule to apply
    if s[0] == a[0] and abs(s[1] - a[1]) <= MAX_MINOR_SKEW:
        return None
    if a < s:
        return (f"agent {agent} is too old for control plane {server} (it serves agents"
                f" {supported(server)}); upgrade this agent to {s[0]}.{max(0, s[1] - MAX_MINOR_SKEW)} or later"
                " (`pip install -U meshline`, then `meshline upgrade-sidecar NAME`)")  # fmt: skip
    return (f"agent {agent} is newer than control plane {server} supports (it serves agents"
            f" {supported(server)}); upgrade the control plane first, or run agent {s[0]}.{s[1] + MAX_MINOR_SKEW}"
            " or older")  # fmt: skip


def supported(server: str) -> str:
    """The agent versions a control plane of version ``server`` serves, in words."""
    s = parse(server)
    if s is None:
        return "of any version"
    low, high = max(0, s[1] - MAX_MINOR_SKEW), s[1] + MAX_MINOR_SKEW
    return f"{s[0]}.{low}.x to {s[0]}.{high}.x"


def agent_version_from_user_agent(header: str | None) -> str | None:
    """The version in ``meshline-agent/X`` (None: not an agent's request)."""
    if not header or not header.startswith(USER_AGENT_PREFIX):
        return None
    return header[len(USER_AGENT_PREFIX) :].split()[0] if header[len(USER_AGENT_PREFIX) :].strip() else ""
