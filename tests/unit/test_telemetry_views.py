"""A look at a dataplane's recent requests (the dashboard) watches its service for a while."""

from __future__ import annotations

import asyncio

import pytest

from meshline.telemetry import intake as intake_mod
from meshline.telemetry.intake import TelemetryIntake, TelemetryLimits


def test_a_look_watches_until_nobody_renews_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(intake_mod, "VIEW_LEASE_S", 0.3)

    async def scenario() -> list[frozenset[str]]:
        intake = TelemetryIntake(limits=TelemetryLimits(views=2))
        pushed: list[frozenset[str]] = []

        async def on_watch(mesh: str, services: frozenset[str]) -> None:
            pushed.append(services)

        intake.on_watch = on_watch
        intake.view("default", ["orders"])
        await asyncio.sleep(0.05)
        assert intake.watched("default") == {"orders"} and intake.watched("other") == frozenset()
        intake.view("default", ["orders"])  # a renewal pushes nothing new
        intake.view("default", ["web", "billing"])  # over the bound: billing is left out
        await asyncio.sleep(0.05)
        assert intake.watched("default") == {"orders", "web"}
        await asyncio.sleep(0.6)  # nobody renewed: the sidecars go back to sampling
        assert intake.watched("default") == frozenset()
        await intake.stop()
        return pushed

    pushed = asyncio.run(scenario())
    assert pushed[0] == {"orders"} and pushed[1] == {"orders", "web"} and pushed[-1] == frozenset()
