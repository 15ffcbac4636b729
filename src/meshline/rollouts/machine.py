"""The rollout state machine, sans-IO (as h11 is for HTTP): pure transitions from a state,
the time and what was measured to the next state. No clock, no sockets, no store: the
controller (:mod:`.controller`) reads the inputs, calls these functions and writes the result.

Phases::

    waiting ──candidate registers──▶ progressing ──last stage done + prePromotion 2xx──▶ promoted
                                       │   ▲
              inconclusive × limit,    │   │ resume / promote
              webhook not 2xx, pause   ▼   │
                                      paused
    progressing | paused ──failures > budget, deadline passed──▶ rolledBack
    any but promoted ──abort──▶ aborted

A stage is entered in two halves: its ``preStep`` webhooks must answer 2xx before its weights
apply (``entered``); then it runs until it has held long enough, its ``step`` webhooks passed,
an analysis passed (when it is analysed) and its gate (if any) was promoted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from meshline.rollouts.api import Analysis, Check
from meshline.rollouts.plan import Stage

Phase = Literal["waiting", "progressing", "paused", "promoted", "rolledBack", "aborted"]
FINAL: frozenset[str] = frozenset({"promoted", "rolledBack", "aborted"})
HISTORY = 100  # events kept per rollout
Verdict = Literal["pass", "fail", "inconclusive"]
WebhookStage = Literal["preStep", "step", "prePromotion"]


@dataclass(frozen=True)
class Signal:
    """One version's golden signals over a check's window."""

    requests: int
    failures: int
    p50: float | None = None
    p99: float | None = None

    @property
    def success_pct(self) -> float | None:
        return 100.0 * (self.requests - self.failures) / self.requests if self.requests else None

    def value(self, metric: str) -> float | None:
        return self.success_pct if metric == "successRate" else self.p50 if metric == "p50" else self.p99


@dataclass(frozen=True)
class CheckResult:
    metric: str
    window: float
    verdict: Verdict
    candidate: float | None
    stable: float | None
    candidate_requests: int
    stable_requests: int
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"metric": self.metric, "window": self.window, "verdict": self.verdict,
                "candidate": self.candidate, "stable": self.stable, "candidateRequests": self.candidate_requests,
                "stableRequests": self.stable_requests, "reason": self.reason}  # fmt: skip


@dataclass(frozen=True)
class State:
    phase: Phase = "waiting"
    stage: int = 0
    entered: bool = False  # the stage's preStep webhooks passed and its weights apply
    stage_started: float = 0.0  # when its weights applied
    passed: bool = False  # an analysis passed in this stage
    webhooks_done: tuple[str, ...] = ()  # "<at>" stages whose webhooks answered 2xx here
    last_analysis: float = 0.0
    failures: int = 0  # failed analyses, the whole rollout
    inconclusive_run: int = 0
    reason: str = ""  # why it is paused, rolled back...
    checks: tuple[CheckResult, ...] = ()
    history: tuple[dict[str, Any], ...] = ()
    handled: int = 0  # the last command id acted on
    started: float = 0.0
    missing_since: float = 0.0  # when the candidate lost its last ready instance (0: it has one)

    def to_json(self) -> dict[str, Any]:
        return {
            "phase": self.phase, "stage": self.stage, "entered": self.entered, "stageStarted": self.stage_started,
            "passed": self.passed, "webhooksDone": list(self.webhooks_done),
            "lastAnalysis": self.last_analysis, "failures": self.failures, "inconclusiveRun": self.inconclusive_run,
            "reason": self.reason, "checks": [c.to_json() for c in self.checks], "history": list(self.history),
            "handled": self.handled, "started": self.started, "missingSince": self.missing_since,
        }  # fmt: skip

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> State:
        checks = tuple(
            CheckResult(c["metric"], c["window"], c["verdict"], c["candidate"], c["stable"], c["candidateRequests"],
                        c["stableRequests"], c["reason"]) for c in d.get("checks", ())
        )  # fmt: skip
        return cls(
            phase=d.get("phase", "waiting"), stage=int(d.get("stage", 0)), entered=bool(d.get("entered")),
            stage_started=float(d.get("stageStarted", 0.0)), passed=bool(d.get("passed")),
            webhooks_done=tuple(d.get("webhooksDone", ())),
            last_analysis=float(d.get("lastAnalysis", 0.0)), failures=int(d.get("failures", 0)),
            inconclusive_run=int(d.get("inconclusiveRun", 0)), reason=str(d.get("reason", "")), checks=checks,
            history=tuple(d.get("history", ())), handled=int(d.get("handled", 0)), started=float(d.get("started", 0)),
            missing_since=float(d.get("missingSince", 0.0)),
        )  # fmt: skip


REPEATING = frozenset({"analysis passed", "analysis inconclusive"})  # one entry per run of them, counted


def _event(s: State, now: float, event: str, detail: str = "") -> State:
    entry: dict[str, Any] = {"at": round(now, 3), "event": event, "stage": s.stage, "detail": detail}
    last = s.history[-1] if s.history else None
    if last is not None and event in REPEATING and last["event"] == event and last["stage"] == s.stage:
        # a long wait must not push the steps out of the history: the run is one entry
        entry = {**entry, "times": int(last.get("times", 1)) + 1, "since": last.get("since", last["at"])}
        return dataclasses.replace(s, history=(*s.history[:-1], entry))
    return dataclasses.replace(s, history=(*s.history, entry)[-HISTORY:])


def _go(s: State, now: float, event: str, detail: str = "", **changes: Any) -> State:
    return _event(dataclasses.replace(s, **changes), now, event, detail)


# -- what routing shows ----------------------------------------------------------------
@dataclass(frozen=True)
class Weights:
    candidate: int  # percent of ordinary requests
    mirror: float = 0.0
    ab: bool = False  # marked (A/B) requests go to the candidate
    testers: bool = True  # the testers' header goes to the candidate


def weights(s: State, stages: Sequence[Stage]) -> Weights:
    """What the generated route sends where in state ``s`` (a function of the state alone, so
    a restarted control plane writes exactly the route it left)."""
    if s.phase == "promoted":
        return Weights(100, testers=False)
    if s.phase in ("rolledBack", "aborted", "waiting") or s.missing_since:
        return Weights(0, testers=False)  # (no instance of the candidate: nothing could answer there)
    idx = s.stage if s.entered else s.stage - 1
    if idx < 0:
        return Weights(0)
    st = stages[min(idx, len(stages) - 1)]
    return Weights(st.weight, st.mirror, st.ab)


# -- analysis ----------------------------------------------------------------------------
def judge(check: Check, candidate: Signal, stable: Signal, min_requests: int) -> CheckResult:
    """One check's verdict from the two versions' signals over its window."""
    window = check.window.total_seconds()
    cand, base = candidate.value(check.metric), stable.value(check.metric)
    base_known = base if stable.requests >= min_requests else None

    def result(verdict: Verdict, reason: str) -> CheckResult:
        return CheckResult(check.metric, window, verdict, cand, base, candidate.requests, stable.requests, reason)

    if candidate.requests < min_requests or cand is None:
        return result("inconclusive", f"{candidate.requests} requests to the candidate in {window:g}s,"
                      f" fewer than minRequests ({min_requests})")
    if check.metric == "successRate":
        floor = check.min if check.min is not None else 0.0
        if cand >= floor:
            return result("pass", f"{cand:.2f}% >= {floor:g}%")
        if base_known is not None and cand >= base_known - check.tolerance:
            return result("pass", f"{cand:.2f}% is below {floor:g}% but so is the stable version ({base_known:.2f}%)")
        vs = f", stable {base_known:.2f}%" if base_known is not None else ""
        return result("fail", f"{cand:.2f}% < {floor:g}%{vs}")
    ceiling = check.max_ms if check.max_ms is not None else float("inf")
    if cand <= ceiling:
        return result("pass", f"{cand:g} ms <= {ceiling:g} ms")
    if base_known is not None and cand <= base_known + check.tolerance:
        return result("pass", f"{cand:g} ms is above {ceiling:g} ms but so is the stable version ({base_known:g} ms)")
    vs = f", stable {base_known:g} ms" if base_known is not None else ""
    return result("fail", f"{cand:g} ms > {ceiling:g} ms{vs}")


def overall(results: Sequence[CheckResult]) -> Verdict:
    if any(r.verdict == "fail" for r in results):
        return "fail"
    return "inconclusive" if any(r.verdict == "inconclusive" for r in results) else "pass"


# -- transitions ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Tick:
    """What the controller saw at ``now``."""

    now: float
    candidate_ready: bool  # a ready Dataplane with the candidate's tags exists
    # one (candidate, stable) pair per check of the analysis, in order; None: not due
    signals: Sequence[tuple[Signal, Signal]] | None = None
    # since when this replica's telemetry has seen the traffic (a restarted control plane starts
    # empty): before a whole window of it, an inconclusive analysis does not count yet
    observed_since: float = 0.0


def analysis_due(s: State, analysis: Analysis, stages: Sequence[Stage], now: float) -> bool:
    if s.phase != "progressing" or not s.entered or not analysis.checks or s.stage >= len(stages):
        return False
    if not stages[s.stage].analysed:
        return False
    return now - max(s.last_analysis, s.stage_started) >= analysis.interval.total_seconds()


def pending_webhooks(s: State, stages: Sequence[Stage], configured: set[str]) -> WebhookStage | None:
    """The webhooks to call before the next transition (the controller calls them and feeds
    :func:`webhooks_answered`), or None."""
    if s.phase != "progressing":
        return None
    if s.stage >= len(stages):
        return "prePromotion" if "prePromotion" in configured and "prePromotion" not in s.webhooks_done else None
    if not s.entered:
        return "preStep" if "preStep" in configured and "preStep" not in s.webhooks_done else None
    return "step" if "step" in configured and "step" not in s.webhooks_done else None


def webhooks_answered(s: State, at: WebhookStage, failure: str | None, now: float) -> State:
    """``failure``: the first webhook that did not answer 2xx and what it answered (None: all did)."""
    if s.phase != "progressing":
        return s
    if failure is not None:
        return _go(s, now, "paused", f"{at} webhook: {failure}", phase="paused", reason=f"{at} webhook: {failure}")
    return _go(s, now, "webhooks", f"{at} webhooks answered 2xx", webhooks_done=(*s.webhooks_done, at))


def start(s: State, now: float, candidate_ready: bool, wait: bool) -> State:
    """A new rollout: it waits for its candidate when told to, else starts at once."""
    if wait and not candidate_ready:
        return _go(s, now, "waiting", "for a Dataplane with the candidate's tags", phase="waiting", started=now)
    return _go(s, now, "started", "", phase="progressing", started=now)


CANDIDATE_GRACE_S = 15.0  # a candidate without a ready instance this long is rolled back


def _candidate_presence(s: State, now: float, ready: bool) -> State:
    """While the candidate has no ready instance its share goes to the stable version (an empty
    subset would fail those requests); gone for longer than the grace, the release is rolled back."""
    if ready:
        return _go(s, now, "candidate back", "", missing_since=0.0) if s.missing_since else s
    if not s.missing_since:
        return _go(s, now, "candidate gone", "no ready instance: its share goes to the stable version meanwhile",
                   missing_since=now)  # fmt: skip
    if now - s.missing_since > CANDIDATE_GRACE_S:
        return _go(s, now, "rolledBack", f"no ready instance of the candidate for {CANDIDATE_GRACE_S:g}s",
                   phase="rolledBack", reason=f"the candidate had no ready instance for {CANDIDATE_GRACE_S:g}s")
    return s


def tick(s: State, analysis: Analysis, stages: Sequence[Stage], t: Tick, configured: set[str]) -> State:
    """Time passed (and maybe an analysis ran): the next state."""
    if s.phase == "waiting":
        return _go(s, t.now, "candidate ready", "", phase="progressing") if t.candidate_ready else s
    if s.phase in ("progressing", "paused"):
        s = _candidate_presence(s, t.now, t.candidate_ready)
    if s.phase != "progressing" or s.missing_since:
        return s
    if s.stage >= len(stages):
        if pending_webhooks(s, stages, configured) is None:
            return _go(s, t.now, "promoted", "every request goes to the candidate", phase="promoted", reason="")
        return s
    if not s.entered:
        if pending_webhooks(s, stages, configured) is not None:
            return s
        st = stages[s.stage]
        return _go(s, t.now, "step", st.describe(), entered=True, stage_started=t.now, passed=False,
                   inconclusive_run=0)  # fmt: skip
    st = stages[s.stage]
    if t.signals is not None:
        s = _analysed(s, analysis, t)
        if s.phase != "progressing":
            return s
    deadline = analysis.progress_deadline.total_seconds()
    waiting_for_gate = st.gate  # only `promote` ends a gated step (command() moves it on)
    if not waiting_for_gate and t.now - s.stage_started > deadline:
        return _go(s, t.now, "rolledBack", f"progress deadline ({deadline:g}s) passed in this step",
                   phase="rolledBack", reason=f"progress deadline ({deadline:g}s) passed")
    done = (
        t.now - s.stage_started >= st.hold
        and (s.passed or not st.analysed or not analysis.checks)
        and pending_webhooks(s, stages, configured) is None
        and not waiting_for_gate
    )
    if not done:
        return s
    return _next_stage(s, t.now)


def _next_stage(s: State, now: float) -> State:
    return _go(s, now, "step done", "", stage=s.stage + 1, entered=False, passed=False,
               webhooks_done=tuple(w for w in s.webhooks_done if w == "prePromotion"))


def _analysed(s: State, analysis: Analysis, t: Tick) -> State:
    assert t.signals is not None
    results = tuple(judge(c, cand, base, analysis.min_requests)
                    for c, (cand, base) in zip(analysis.checks, t.signals, strict=True))  # fmt: skip
    verdict = overall(results)
    summary = "; ".join(f"{r.metric} {r.verdict}: {r.reason}" for r in results)
    s = dataclasses.replace(s, checks=results, last_analysis=t.now)
    if verdict == "fail":
        failures = s.failures + 1
        if failures > analysis.failure_budget:
            return _go(s, t.now, "rolledBack", summary, phase="rolledBack", failures=failures,
                       reason=f"analysis failed {failures}x (budget {analysis.failure_budget}): {summary}")
        return _go(s, t.now, "analysis failed", summary, failures=failures, inconclusive_run=0)
    if verdict == "inconclusive":
        if t.now - max(s.stage_started, t.observed_since) < max(c.window.total_seconds() for c in analysis.checks):
            # the step has not run for a whole window yet: too early to call it inconclusive
            return _go(s, t.now, "analysis inconclusive", f"window not full yet; {summary}")
        run = s.inconclusive_run + 1
        if run >= analysis.inconclusive_limit:
            return _go(s, t.now, "paused", f"inconclusive {run}x in a row: {summary}", phase="paused",
                       inconclusive_run=run, reason=f"inconclusive {run}x in a row: {summary}")
        return _go(s, t.now, "analysis inconclusive", summary, inconclusive_run=run)
    return _go(s, t.now, "analysis passed", summary, passed=True, inconclusive_run=0)


# -- commands (meshline rollout promote|pause|resume|abort) ---------------------------------
Command = Literal["promote", "pause", "resume", "abort"]
COMMANDS: tuple[Command, ...] = ("promote", "pause", "resume", "abort")


def command(s: State, what: Command, now: float, stages: Sequence[Stage]) -> State:
    """A user's command; one that makes no sense in the phase is recorded and changes nothing."""
    if s.phase in FINAL:
        return _event(s, now, f"{what} ignored", f"the rollout is {s.phase}")
    if what == "abort":
        return _go(s, now, "aborted", "by command: every request goes to the stable version", phase="aborted",
                   reason="aborted by command")
    if what == "pause":
        if s.phase == "paused":
            return s
        return _go(s, now, "paused", "by command", phase="paused", reason="paused by command")
    if what == "resume":
        if s.phase != "paused":
            return _event(s, now, "resume ignored", f"the rollout is {s.phase}")
        return _go(s, now, "resumed", "by command", phase="progressing", reason="", inconclusive_run=0,
                   webhooks_done=tuple(w for w in s.webhooks_done if w != "step" or s.passed))
    # promote: the current stage ends now (its gate, hold and analysis waived)
    if s.phase == "waiting":
        return _event(s, now, "promote ignored", "the candidate has not registered yet")
    s = dataclasses.replace(s, phase="progressing", reason="")
    if s.stage >= len(stages):
        return s
    if not s.entered:
        s = dataclasses.replace(s, entered=True, stage_started=now)
    return _event(_next_stage(s, now), now, "promoted step", "by command")
