"""The dataplane agent: registers a workload, runs and supervises its Envoy (and optionally
the app itself), and shuts everything down in order. See :mod:`meshline.agent.agent`."""

from meshline.agent.agent import Agent, Phase
from meshline.agent.config import AgentConfig, LocalService, Upstream
from meshline.agent.envoy import EnvoyError

__all__ = ["Agent", "AgentConfig", "EnvoyError", "LocalService", "Phase", "Upstream"]
