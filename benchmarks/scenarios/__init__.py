"""The registry of scenarios, in table order.

To add one: write ``benchmarks/scenarios/<name>.py`` with a
``start(env: ScenarioEnv) -> Target`` function and a ``SCENARIO = Scenario(...)``, then add
it to ``SCENARIOS`` below. See ``base.py`` for the contract.
"""

from benchmarks.scenarios import direct, envoy_pair, haproxy_pair, meshline
from benchmarks.scenarios.base import Scenario, ScenarioEnv, Target, Upstream

SCENARIOS: dict[str, Scenario] = {
    s.key: s
    for s in (
        direct.SCENARIO,
        meshline.SCENARIO,
        meshline.NO_ACCESS_LOG,
        envoy_pair.SCENARIO,
        haproxy_pair.SCENARIO,
    )
}

__all__ = ["SCENARIOS", "Scenario", "ScenarioEnv", "Target", "Upstream"]
