"""What a scenario is.

A scenario puts something between the client and the upstream and says where the client
should connect. It is a plain function::

    def start(env: ScenarioEnv) -> Target: ...

It starts its processes with ``env.procs.spawn(...)`` (and registers any other teardown
with ``env.procs.add_cleanup``), waits until a request through it succeeds, and returns
the client-facing URL plus the PIDs of the proxy processes whose CPU and memory are to be
measured (grouped into sidecars when one sidecar is several processes, such as an agent and
its Envoy). The harness owns ``env.procs`` and closes it after the measurements -- on
success, on error and on Ctrl-C -- so a scenario has no stop code of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.procs import ProcessGroup


@dataclass(frozen=True)
class Upstream:
    """The shared origin server (nginx) every scenario forwards to."""

    host: str
    port: int
    path: str  # serves a BODY_BYTES response

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{self.path}"


@dataclass(frozen=True)
class ScenarioEnv:
    workdir: Path  # private scratch directory (configs, certs, logs)
    procs: ProcessGroup  # spawn everything here; the harness stops it
    upstream: Upstream


@dataclass(frozen=True)
class Target:
    url: str  # where the load generators connect
    proxies: Mapping[str, int] = field(default_factory=dict)  # role -> PID to measure
    # sidecar -> its roles (e.g. agent + Envoy); default: every proxy is a sidecar of its own
    sidecars: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # role -> PID measured and reported but not counted as proxy cost (e.g. a control plane)
    others: Mapping[str, int] = field(default_factory=dict)

    def sidecar_roles(self) -> dict[str, tuple[str, ...]]:
        return dict(self.sidecars) if self.sidecars else {role: (role,) for role in self.proxies}


@dataclass(frozen=True)
class Scenario:
    key: str  # command-line name, JSON key
    label: str  # table heading, e.g. "(c) envoy pair"
    description: str
    start: Callable[[ScenarioEnv], Target]
    requires: tuple[str, ...] = ()  # programs (tools.find names) it cannot run without
    default: bool = True  # run when no -s is given (False: diagnostics, run only by name)
