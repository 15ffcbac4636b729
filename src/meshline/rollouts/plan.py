"""Every strategy as one list of stages: what the candidate gets at each, and for how long.

The state machine (:mod:`.machine`) walks stages; it never looks at the strategy itself, so
canary, blue/green and A/B share one set of transitions.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshline.rollouts.api import RolloutSpec


@dataclass(frozen=True)
class Stage:
    weight: int = 0  # percent of ordinary requests to the candidate
    mirror: float = 0.0  # percent of requests copied to the candidate (answers dropped)
    ab: bool = False  # only requests with the A/B header or cookie go to the candidate
    hold: float = 0.0  # seconds the stage lasts at least
    gate: bool = False  # waits for `meshline rollout promote`
    analysed: bool = True  # analysis runs (and must pass once) here

    def describe(self) -> str:
        if self.gate and not (self.weight or self.mirror or self.ab):
            return "manual gate"
        if self.ab:
            what = "A/B (marked requests only)"
        elif self.mirror:
            what = f"mirror {self.mirror:g}%"
        else:
            what = f"{self.weight}%"
        return what + (" + manual gate" if self.gate else "")


def stages(spec: RolloutSpec) -> list[Stage]:
    s = spec.strategy
    if s.canary is not None:
        out: list[Stage] = []
        weight = 0
        for step in s.canary.steps:
            weight = step.weight if step.weight is not None else weight
            # a gate on 0% has nothing to analyse; the candidate gets only testers there
            out.append(Stage(weight=weight, hold=step.pause.total_seconds(), gate=step.manual_gate,
                             analysed=weight > 0))
        return out
    if s.blue_green is not None:
        bg = s.blue_green
        out = []
        if bg.mirror_percent > 0:
            out.append(Stage(mirror=bg.mirror_percent, hold=bg.mirror_for.total_seconds()))
        if bg.preview.total_seconds() > 0 or bg.manual_gate:
            out.append(Stage(hold=bg.preview.total_seconds(), gate=bg.manual_gate, analysed=False))
        return out or [Stage(analysed=False)]
    assert s.ab_test is not None
    return [Stage(ab=True, hold=s.ab_test.duration.total_seconds())]
