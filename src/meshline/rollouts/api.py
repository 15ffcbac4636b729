"""Rollout: release a new version of one service progressively, with analysis and rollback.

    kind: Rollout
    mesh: default
    name: orders
    spec:
      service: orders
      stable: {version: v1}
      candidate: {version: v2}
      testers: {name: x-canary, value: "true"}   # always sent to the candidate
      strategy:
        canary:
          steps: [{weight: 10, pause: 10s}, {weight: 50, pause: 10s}, {manualGate: true}]
      analysis:
        interval: 2s
        minRequests: 50
        checks:
          - {metric: successRate, min: 99, window: 10s}
          - {metric: p99, maxMs: 250, window: 10s}

The schema checks everything one document can say (weights 0-100 and increasing, a window no
shorter than the telemetry's one-second resolution, thresholds that can be met); the checks
that need the rest of the mesh (the service, its versions, other routes) are in :mod:`.checks`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import Field, field_validator, model_validator

from meshline.core.dataplane import check_tags
from meshline.core.errors import FieldProblem
from meshline.core.resource import KindInfo, Resource
from meshline.core.schema import Duration, Name, Spec
from meshline.policies.httproute.api import HEADER_NAME_RE

RESOLUTION_S = 1.0  # the telemetry's golden signals are kept per second
LONGEST_WINDOW_S = 300.0  # ...for the last five minutes (telemetry.window.LONGEST_WINDOW_S)
MAX_STEPS = 50
MAX_CHECKS = 10
MAX_WEBHOOKS = 10
MAX_WEBHOOK_S = 30.0  # a webhook's timeout at most
METRICS = ("successRate", "p50", "p99")


class Version(Spec):
    """The instances of the service that make up one side: ``version`` is their version tag;
    ``tags`` may narrow it further."""

    version: str = Field(min_length=1, max_length=63)
    tags: dict[str, str] = Field(default_factory=dict)

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: dict[str, str]) -> dict[str, str]:
        if "service" in v or "version" in v:
            raise ValueError("give the version with 'version'; tags may only narrow it (e.g. zone)")
        check_tags(v)
        return v

    def all_tags(self) -> dict[str, str]:
        return {**self.tags, "version": self.version}


class HeaderPin(Spec):
    """Requests with this header (exactly this value) go to the candidate."""

    name: str
    value: str = Field(min_length=1)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not HEADER_NAME_RE.match(v) or v.startswith(":"):
            raise ValueError(f"'{v}' is not a valid HTTP header name")
        return v.lower()


class CookiePin(Spec):
    name: str = Field(pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
    value: str = Field(pattern=r"^[A-Za-z0-9!#$%&'()*+./:<=>?@\[\]^_`{|}~-]+$")


class CanaryStep(Spec):
    """Send ``weight`` percent of ordinary requests to the candidate, then hold for ``pause``
    (analysis runs all along); ``manualGate`` holds until ``meshline rollout promote``."""

    weight: int | None = Field(default=None, ge=0, le=100)
    pause: Duration = timedelta(0)
    manual_gate: bool = False

    @model_validator(mode="after")
    def _something(self) -> CanaryStep:
        if self.weight is None and not self.manual_gate:
            raise ValueError("give weight (percent to the candidate) or manualGate: true")
        return self


class Canary(Spec):
    steps: list[CanaryStep] = Field(min_length=1, max_length=MAX_STEPS)


class BlueGreen(Spec):
    """Mirror ``mirror.percent`` of requests to the candidate for ``mirror.duration`` (its answers
    are dropped, its signals analysed), then hold a ``preview`` with only testers on it, then
    switch everything at once."""

    mirror_percent: float = Field(default=0.0, ge=0, le=100)
    mirror_for: Duration = timedelta(0)
    preview: Duration = timedelta(0)
    manual_gate: bool = False


class ABTest(Spec):
    """Only requests with this header or cookie go to the candidate, for ``duration``."""

    header: HeaderPin | None = None
    cookie: CookiePin | None = None
    duration: Duration

    @model_validator(mode="after")
    def _one(self) -> ABTest:
        if (self.header is None) == (self.cookie is None):
            raise ValueError("give exactly one of header, cookie")
        return self


class Strategy(Spec):
    canary: Canary | None = None
    blue_green: BlueGreen | None = None
    ab_test: ABTest | None = None

    @model_validator(mode="after")
    def _one(self) -> Strategy:
        given = [n for n in ("canary", "blue_green", "ab_test") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of canary, blueGreen, abTest")
        return self


class Check(Spec):
    """One signal of the candidate over the last ``window``, compared with the stable version
    over the same window: the check fails only when the candidate is past its threshold and
    also worse than the stable version by more than ``tolerance`` (so a dependency failing
    both versions does not roll back the release)."""

    metric: Literal["successRate", "p50", "p99"]
    window: Duration
    min: float | None = None  # successRate: percent
    max_ms: float | None = Field(default=None, gt=0)  # p50/p99
    tolerance: float = Field(default=0.0, ge=0)  # percent points (successRate) or milliseconds


class Analysis(Spec):
    interval: Duration = timedelta(seconds=5)
    min_requests: int = Field(default=50, ge=1, le=10_000_000)  # per check window, of the candidate
    checks: list[Check] = Field(default_factory=list, max_length=MAX_CHECKS)
    failure_budget: int = Field(default=0, ge=0, le=1000)  # failed analyses tolerated; one more rolls back
    inconclusive_limit: int = Field(default=3, ge=1, le=1000)  # inconclusive analyses in a row: pause
    progress_deadline: Duration = timedelta(minutes=10)  # no step finished for this long: roll back


class Webhook(Spec):
    """Called (POST, JSON body naming the rollout and step) before a step (``preStep``), once
    at each step before it may end (``step``: a smoke or load test) or before promotion
    (``prePromotion``); any answer but 2xx stops the rollout (it pauses, routing unchanged)."""

    name: Name
    at: Literal["preStep", "step", "prePromotion"]
    url: str = Field(pattern=r"^https?://[^\s/]+(/\S*)?$", max_length=2048)
    timeout: Duration = timedelta(seconds=5)


class RolloutSpec(Spec):
    service: Name
    stable: Version
    candidate: Version
    strategy: Strategy
    analysis: Analysis = Field(default_factory=Analysis)
    testers: HeaderPin | None = None
    webhooks: list[Webhook] = Field(default_factory=list, max_length=MAX_WEBHOOKS)
    # Wait (phase waiting) until a Dataplane with the candidate's tags registers.
    wait_for_candidate: bool = False


def spec_problems(res: Resource) -> list[FieldProblem]:
    """What the schema alone cannot say: steps, windows, thresholds, versions."""
    spec = res.spec
    assert isinstance(spec, RolloutSpec)
    out: list[FieldProblem] = []
    if spec.stable.all_tags() == spec.candidate.all_tags():
        out.append(FieldProblem("spec.candidate.version", "is the stable version; name the new version here"))
    if spec.strategy.canary is not None:
        out += _step_problems(spec.strategy.canary.steps)
    for i, check in enumerate(spec.analysis.checks):
        out += _check_problems(f"spec.analysis.checks[{i}]", check)
    interval = spec.analysis.interval.total_seconds()
    if interval < RESOLUTION_S:
        out.append(FieldProblem("spec.analysis.interval", f"must be at least {RESOLUTION_S:g}s (the telemetry"
                                " keeps signals per second); use 1s or more"))
    names = [w.name for w in spec.webhooks]
    for i, w in enumerate(spec.webhooks):
        if w.timeout.total_seconds() > MAX_WEBHOOK_S or w.timeout.total_seconds() <= 0:
            out.append(FieldProblem(f"spec.webhooks[{i}].timeout", f"must be above 0 and at most {MAX_WEBHOOK_S:g}s"
                                    " (the controller waits for the answer); a longer test should answer at once"
                                    " and be checked by a later step's webhook"))
        if names.index(w.name) != i:
            out.append(FieldProblem(f"spec.webhooks[{i}].name", f"'{w.name}' is used twice; give each webhook its own"))
    return out


def _step_problems(steps: list[CanaryStep]) -> list[FieldProblem]:
    out = []
    last = -1
    for i, step in enumerate(steps):
        if step.weight is None:
            continue
        if step.weight <= last:
            out.append(FieldProblem(f"spec.strategy.canary.steps[{i}].weight", f"{step.weight} does not increase on"
                                    f" the step before ({last}); give weights in increasing order, e.g. 10, 50, 100"))
        last = step.weight
    return out


def _check_problems(path: str, check: Check) -> list[FieldProblem]:
    out = []
    window = check.window.total_seconds()
    if window < RESOLUTION_S:
        out.append(FieldProblem(f"{path}.window", f"{window:g}s is shorter than the telemetry's resolution"
                                f" ({RESOLUTION_S:g}s per bucket); use 1s or more"))
    elif window > LONGEST_WINDOW_S:
        out.append(FieldProblem(f"{path}.window", f"{window:g}s is longer than the telemetry keeps"
                                f" ({LONGEST_WINDOW_S:g}s); use 5m or less"))
    if check.metric == "successRate":
        if check.max_ms is not None:
            out.append(FieldProblem(f"{path}.maxMs", "applies to latency checks (p50, p99); give min for successRate"))
        if check.min is None:
            out.append(FieldProblem(f"{path}.min", "is required: the lowest success rate (percent) to accept, e.g. 99"))
        elif not 0 <= check.min <= 100:
            out.append(FieldProblem(f"{path}.min", f"{check.min:g}% can never be met; give a percent from 0 to 100"))
    else:
        if check.min is not None:
            out.append(FieldProblem(f"{path}.min", "applies to successRate; give maxMs for a latency check"))
        if check.max_ms is None:
            out.append(FieldProblem(f"{path}.maxMs", f"is required: the highest {check.metric} (milliseconds) to accept"))
    return out


def _strategy_column(r: Resource) -> str:
    assert isinstance(r.spec, RolloutSpec)
    s = r.spec.strategy
    if s.canary is not None:
        return "canary " + ",".join(str(st.weight) if st.weight is not None else "gate" for st in s.canary.steps)
    return "blueGreen" if s.blue_green is not None else "abTest"


def _kind() -> KindInfo:
    return KindInfo(
        kind="Rollout",
        plural="rollouts",
        spec=RolloutSpec,
        summary="Progressive delivery of a new version of one service: canary, blue/green or A/B, with analysis",
        validators=(spec_problems,),
        columns={
            "SERVICE": lambda r: r.spec.service if isinstance(r.spec, RolloutSpec) else "",
            "STABLE": lambda r: r.spec.stable.version if isinstance(r.spec, RolloutSpec) else "",
            "CANDIDATE": lambda r: r.spec.candidate.version if isinstance(r.spec, RolloutSpec) else "",
            "STRATEGY": _strategy_column,
        },
    )


KIND = _kind()
