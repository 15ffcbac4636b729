"""The rollout state machine as plain function calls: a state, the time, measurements in;
the next state out (no clock, no store, no sockets)."""

from __future__ import annotations

from typing import Any

import pytest

from meshline.core.errors import ValidationError
from meshline.core.resource import KindRegistry, Resource
from meshline.rollouts import machine as m
from meshline.rollouts.api import KIND, RolloutSpec
from meshline.rollouts.plan import stages
from meshline.rollouts.routing import route_spec

KINDS = KindRegistry([KIND])
HEALTHY = m.Signal(requests=100, failures=0, p50=2.0, p99=5.0)


def rollout(**spec: Any) -> Resource:
    base: dict[str, Any] = {
        "service": "orders", "stable": {"version": "v1"}, "candidate": {"version": "v2"},
        "strategy": {"canary": {"steps": [{"weight": 10, "pause": "2s"}, {"weight": 50, "pause": "2s"}]}},
        "analysis": {"interval": "1s", "minRequests": 20,
                     "checks": [{"metric": "successRate", "min": 99, "window": "2s"},
                                {"metric": "p99", "maxMs": 100, "window": "2s"}]},
    }  # fmt: skip
    base.update(spec)
    return KINDS.decode({"kind": "Rollout", "mesh": "default", "name": "orders", "spec": base})


def spec_of(r: Resource) -> RolloutSpec:
    assert isinstance(r.spec, RolloutSpec)
    return r.spec


def run(spec: RolloutSpec, state: m.State, now: float, cand: m.Signal, base: m.Signal = HEALTHY,
        configured: set[str] | None = None) -> m.State:  # fmt: skip
    plan = stages(spec)
    signals = None
    if m.analysis_due(state, spec.analysis, plan, now):
        signals = [(cand, base)] * len(spec.analysis.checks)
    return m.tick(state, spec.analysis, plan, m.Tick(now, True, signals), configured or set())


def drive(spec: RolloutSpec, cand: m.Signal, until: float, base: m.Signal = HEALTHY) -> tuple[m.State, list[int]]:
    """Tick every 0.25 s; return the final state and each distinct candidate weight seen."""
    plan = stages(spec)
    s = m.start(m.State(), 0.0, True, False)
    seen = [m.weights(s, plan).candidate]
    t = 0.0
    while t <= until and s.phase not in m.FINAL:
        s = run(spec, s, t, cand, base)
        w = m.weights(s, plan).candidate
        if not seen or seen[-1] != w:
            seen.append(w)
        t += 0.25
    w = m.weights(s, plan).candidate
    if seen[-1] != w:
        seen.append(w)
    return s, seen


def test_a_healthy_candidate_walks_every_step_and_is_promoted() -> None:
    s, seen = drive(spec_of(rollout()), HEALTHY, 30)
    assert s.phase == "promoted"
    assert seen == [0, 10, 50, 100]
    assert [h["event"] for h in s.history].count("analysis passed") >= 2


def test_a_failing_candidate_is_rolled_back_at_the_first_conclusive_analysis() -> None:
    s, seen = drive(spec_of(rollout()), m.Signal(requests=100, failures=10, p50=2, p99=5), 30)
    assert s.phase == "rolledBack" and seen == [0, 10, 0]
    assert s.failures == 1 and "successRate fail" in s.reason
    verdicts = {c.metric: c.verdict for c in s.checks}
    assert verdicts == {"successRate": "fail", "p99": "pass"}


def test_the_failure_budget_tolerates_that_many_failed_analyses() -> None:
    spec = spec_of(rollout(analysis={"interval": "1s", "minRequests": 20, "failureBudget": 2,
                                     "checks": [{"metric": "successRate", "min": 99, "window": "2s"}]}))  # fmt: skip
    s, _ = drive(spec, m.Signal(100, 10), 30)
    assert s.phase == "rolledBack" and s.failures == 3


def test_slow_candidate_is_rolled_back_on_latency_with_success_fine() -> None:
    s, _ = drive(spec_of(rollout()), m.Signal(requests=100, failures=0, p50=300, p99=320), 30)
    assert s.phase == "rolledBack"
    assert {c.metric: c.verdict for c in s.checks} == {"successRate": "pass", "p99": "fail"}


def test_too_little_traffic_pauses_as_inconclusive_instead_of_promoting() -> None:
    s, seen = drive(spec_of(rollout()), m.Signal(requests=5, failures=0, p50=2, p99=5), 30)
    assert s.phase == "paused" and "inconclusive 3x" in s.reason
    assert seen == [0, 10]  # stays at the first step


def test_a_candidate_no_worse_than_stable_passes_below_the_threshold() -> None:
    """A shared dependency failing both versions is not the candidate's fault."""
    sick = m.Signal(requests=100, failures=5, p50=2, p99=5)
    s, _ = drive(spec_of(rollout()), sick, 30, base=sick)
    assert s.phase == "promoted"


def test_a_failing_webhook_pauses_the_step_and_resume_retries_it() -> None:
    spec = spec_of(rollout())
    plan = stages(spec)
    s = m.start(m.State(), 0, True, False)
    assert m.pending_webhooks(s, plan, {"preStep"}) == "preStep"
    s = m.webhooks_answered(s, "preStep", "smoke answered 500", 0.1)
    assert s.phase == "paused" and m.weights(s, plan).candidate == 0  # the step did not start
    s = m.command(s, "resume", 1, plan)
    assert s.phase == "progressing" and m.pending_webhooks(s, plan, {"preStep"}) == "preStep"
    s = m.webhooks_answered(s, "preStep", None, 1.1)
    s = m.tick(s, spec.analysis, plan, m.Tick(1.2, True), {"preStep"})
    assert s.entered and m.weights(s, plan).candidate == 10


def test_a_manual_gate_waits_for_promote() -> None:
    spec = spec_of(rollout(strategy={"canary": {"steps": [{"weight": 10}, {"manualGate": True}, {"weight": 100}]}},
                           analysis={"interval": "1s"}))  # fmt: skip
    plan = stages(spec)
    s = m.start(m.State(), 0, True, False)
    for t in range(0, 200):
        s = m.tick(s, spec.analysis, plan, m.Tick(t / 4, True), set())
    assert s.phase == "progressing" and s.stage == 1 and m.weights(s, plan).candidate == 10
    s = m.command(s, "promote", 60, plan)
    for t in range(240, 250):
        s = m.tick(s, spec.analysis, plan, m.Tick(t / 4, True), set())
    assert s.phase == "promoted"


def test_a_rollout_waiting_for_its_candidate_starts_when_it_registers() -> None:
    spec = spec_of(rollout(waitForCandidate=True))
    plan = stages(spec)
    s = m.start(m.State(), 0, False, True)
    s = m.tick(s, spec.analysis, plan, m.Tick(1, False), set())
    assert s.phase == "waiting" and m.weights(s, plan).candidate == 0
    s = m.tick(s, spec.analysis, plan, m.Tick(2, True), set())
    assert s.phase == "progressing"


def test_the_progress_deadline_rolls_back() -> None:
    spec = spec_of(rollout(analysis={"interval": "1s", "minRequests": 20, "progressDeadline": "5s",
                                     "inconclusiveLimit": 1000,
                                     "checks": [{"metric": "successRate", "min": 99, "window": "2s"}]}))  # fmt: skip
    s, _ = drive(spec, m.Signal(1, 0), 30)
    assert s.phase == "rolledBack" and "deadline" in s.reason


def test_the_state_round_trips_through_json_and_gives_the_same_weights() -> None:
    spec = spec_of(rollout())
    plan = stages(spec)
    s = m.start(m.State(), 0, True, False)
    for t in range(0, 14):
        s = run(spec, s, t / 4, HEALTHY)
    again = m.State.from_json(s.to_json())
    assert again == s and m.weights(again, plan) == m.weights(s, plan)


def test_abort_sends_everything_back_to_stable() -> None:
    spec = spec_of(rollout(testers={"name": "x-canary", "value": "1"}))
    plan = stages(spec)
    s = m.start(m.State(), 0, True, False)
    s = m.tick(s, spec.analysis, plan, m.Tick(0.1, True), set())
    assert route_spec(spec, m.weights(s, plan))["rules"][0]["matches"][0]["headers"][0]["name"] == "x-canary"
    s = m.command(s, "abort", 1, plan)
    assert s.phase == "aborted"
    assert route_spec(spec, m.weights(s, plan))["rules"] == [{"backends": [{"tags": {"version": "v1"}}]}]


@pytest.mark.parametrize(
    ("change", "path", "words"),
    [
        ({"strategy": {"canary": {"steps": [{"weight": 50}, {"weight": 10}]}}}, "spec.strategy.canary.steps[1].weight",
         "does not increase"),
        ({"strategy": {"canary": {"steps": [{"weight": 150}]}}}, "spec.strategy.canary.steps[0].weight", "100"),
        ({"analysis": {"checks": [{"metric": "successRate", "min": 101, "window": "2s"}]}},
         "spec.analysis.checks[0].min", "can never be met"),
        ({"analysis": {"checks": [{"metric": "p99", "maxMs": 10, "window": "500ms"}]}},
         "spec.analysis.checks[0].window", "resolution"),
        ({"candidate": {"version": "v1"}}, "spec.candidate.version", "stable version"),
        ({"analysis": {"checks": [{"metric": "p99", "window": "5s"}]}}, "spec.analysis.checks[0].maxMs", "required"),
    ],
)
def test_bad_specs_are_refused_with_the_field_and_a_fix(change: dict[str, Any], path: str, words: str) -> None:
    with pytest.raises(ValidationError) as err:
        rollout(**change)
    assert any(p.path == path and words in p.message for p in err.value.problems), err.value


def test_step_and_pre_promotion_webhooks_gate_the_end_of_a_step_and_the_promotion() -> None:
    spec = spec_of(rollout(strategy={"canary": {"steps": [{"weight": 50}]}}, analysis={"interval": "1s"}))
    plan, hooks = stages(spec), {"step", "prePromotion"}
    s = m.tick(m.start(m.State(), 0, True, False), spec.analysis, plan, m.Tick(0.1, True), hooks)
    assert s.entered and m.pending_webhooks(s, plan, hooks) == "step"
    s = m.tick(s, spec.analysis, plan, m.Tick(5, True), hooks)
    assert s.stage == 0  # the step waits for its webhook
    s = m.webhooks_answered(s, "step", None, 5.1)
    s = m.tick(s, spec.analysis, plan, m.Tick(5.2, True), hooks)
    assert s.stage == 1 and m.pending_webhooks(s, plan, hooks) == "prePromotion"
    s = m.tick(s, spec.analysis, plan, m.Tick(5.3, True), hooks)
    assert s.phase == "progressing" and m.weights(s, plan).candidate == 50  # not promoted without it
    s = m.webhooks_answered(s, "prePromotion", "release-check answered 409", 5.4)
    assert s.phase == "paused" and m.weights(s, plan).candidate == 50
    s = m.webhooks_answered(m.command(s, "resume", 6, plan), "prePromotion", None, 6.1)
    assert m.tick(s, spec.analysis, plan, m.Tick(6.2, True), hooks).phase == "promoted"


def test_ab_by_cookie_matches_the_cookie_among_others() -> None:
    import re

    spec = spec_of(rollout(strategy={"abTest": {"cookie": {"name": "beta", "value": "yes"}, "duration": "5s"}}))
    plan = stages(spec)
    s = m.tick(m.start(m.State(), 0, True, False), spec.analysis, plan, m.Tick(0.1, True), set())
    rules = route_spec(spec, m.weights(s, plan))["rules"]
    header = rules[0]["matches"][0]["headers"][0]
    assert header["name"] == "cookie" and rules[0]["backends"] == [{"tags": {"version": "v2"}}]
    assert rules[-1]["backends"] == [{"tags": {"version": "v1"}}]  # everyone else: stable only
    for cookie, hit in (("beta=yes", True), ("a=1; beta=yes; b=2", True), ("beta=no", False), ("xbeta=yes", False)):
        assert bool(re.fullmatch(header["regex"], cookie)) is hit, cookie


def test_a_webhook_timeout_past_the_bound_is_refused() -> None:
    with pytest.raises(ValidationError) as err:
        rollout(webhooks=[{"name": "load", "at": "step", "url": "http://127.0.0.1:1/", "timeout": "10m"}])
    assert err.value.problems[0].path == "spec.webhooks[0].timeout"


def test_a_candidate_that_loses_its_instances_gets_no_share_and_is_rolled_back_after_the_grace() -> None:
    spec = spec_of(rollout())
    plan = stages(spec)
    s = m.tick(m.start(m.State(), 0, True, False), spec.analysis, plan, m.Tick(0.1, True), set())
    assert m.weights(s, plan).candidate == 10
    s = m.tick(s, spec.analysis, plan, m.Tick(1, False), set())
    assert m.weights(s, plan).candidate == 0 and s.phase == "progressing"  # nothing sent to an empty subset
    s = m.tick(s, spec.analysis, plan, m.Tick(2, True), set())
    assert m.weights(s, plan).candidate == 10  # back within the grace: the step goes on
    s = m.tick(s, spec.analysis, plan, m.Tick(3, False), set())
    s = m.tick(s, spec.analysis, plan, m.Tick(3 + m.CANDIDATE_GRACE_S + 0.1, False), set())
    assert s.phase == "rolledBack" and "no ready instance" in s.reason


def test_a_long_inconclusive_wait_is_one_history_entry_and_keeps_the_steps() -> None:
    spec = spec_of(rollout(analysis={"interval": "1s", "minRequests": 20, "inconclusiveLimit": 1000,
                                     "progressDeadline": "1h",
                                     "checks": [{"metric": "successRate", "min": 99, "window": "2s"}]}))  # fmt: skip
    s, _ = drive(spec, m.Signal(1, 0), 500)
    assert s.phase == "progressing"
    assert [h["event"] for h in s.history] == ["started", "step", "analysis inconclusive"]
    assert s.history[-1]["times"] >= 400


def test_after_a_restart_inconclusive_analyses_count_only_once_a_whole_window_was_observed() -> None:
    spec = spec_of(rollout(analysis={"interval": "1s", "minRequests": 20, "inconclusiveLimit": 2,
                                     "checks": [{"metric": "successRate", "min": 99, "window": "5s"}]}))  # fmt: skip
    plan = stages(spec)
    s = m.tick(m.start(m.State(), 0, True, False), spec.analysis, plan, m.Tick(0.1, True), set())
    few = [(m.Signal(1, 0), HEALTHY)]
    restarted_at = 30.0  # the step has run for 30 s, the new replica's telemetry for none of it
    for now in (31, 32, 33, 34):
        s = m.tick(s, spec.analysis, plan, m.Tick(now, True, few, restarted_at), set())
    assert s.phase == "progressing" and s.inconclusive_run == 0
    for now in (36, 37):
        s = m.tick(s, spec.analysis, plan, m.Tick(now, True, few, restarted_at), set())
    assert s.phase == "paused"
