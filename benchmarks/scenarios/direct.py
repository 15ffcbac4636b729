"""(a) No proxy: the client talks to nginx. The baseline every "added latency" is taken from."""

from __future__ import annotations

from benchmarks.scenarios.base import Scenario, ScenarioEnv, Target


def start(env: ScenarioEnv) -> Target:
    return Target(url=env.upstream.url, proxies={})


SCENARIO = Scenario(
    key="direct",
    label="(a) direct",
    description="client -> nginx, no proxy",
    start=start,
)
