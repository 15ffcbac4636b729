"""FaultInjection: delay or abort a share of the requests a service receives.

    kind: FaultInjection
    mesh: default
    name: orders-chaos
    spec:
      sources: [{match: {service: web}}]          # default: every caller
      destinations: [{match: {service: orders}}]
      conf:
        faults:
          - match: {headers: {x-meshline-fault: "true"}}   # only marked requests
            delay: {percentage: 100, value: 200ms}
          - abort: {percentage: 5, httpStatus: 503}         # or grpcStatus: 14

Enforced by the destination's sidecar, so the caller's own timeouts and retries
see the fault as a real failure of the destination.
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field, field_validator, model_validator

from meshline.core.errors import FieldProblem
from meshline.core.resource import KindInfo, Resource, spec_as
from meshline.core.schema import Duration, Spec
from meshline.core.selectors import SelectorSpec
from meshline.policies.common.callers import source_problems
from meshline.policies.common.fields import HEADER_NAME_RE


def _percentage(v: float) -> float:
    if not 0 <= v <= 100:
        raise ValueError("must be a percentage from 0 to 100 (e.g. 50 or 0.5)")
    return v


class Delay(Spec):
    percentage: float
    value: Duration

    _p = field_validator("percentage")(classmethod(lambda cls, v: _percentage(v)))

    @field_validator("value")
    @classmethod
    def _value(cls, v: timedelta) -> timedelta:
        if v <= timedelta(0):
            raise ValueError("must be longer than 0 (e.g. 200ms)")
        if v > timedelta(hours=1):
            raise ValueError("must be at most 1h")
        return v


class Abort(Spec):
    percentage: float
    http_status: int | None = None
    grpc_status: int | None = None

    _p = field_validator("percentage")(classmethod(lambda cls, v: _percentage(v)))

    @field_validator("http_status")
    @classmethod
    def _http(cls, v: int | None) -> int | None:
        if v is not None and not 200 <= v <= 599:
            raise ValueError("must be an HTTP status from 200 to 599 (e.g. 503)")
        return v

    @field_validator("grpc_status")
    @classmethod
    def _grpc(cls, v: int | None) -> int | None:
        if v is not None and not 1 <= v <= 16:
            raise ValueError("must be a gRPC status code from 1 to 16 (e.g. 14 for UNAVAILABLE)")
        return v

    @model_validator(mode="after")
    def _one_status(self) -> Abort:
        if (self.http_status is None) == (self.grpc_status is None):
            raise ValueError(
                "set exactly one of httpStatus (e.g. 503) or grpcStatus (e.g. 14, for grpc services)"
            )
        return self


class RequestMatch(Spec):
    # header name -> exact value; "*" means "present, any value"
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("headers")
    @classmethod
    def _headers(cls, v: dict[str, str]) -> dict[str, str]:
        out = {}
        for name, value in v.items():
            low = name.lower()
            if not HEADER_NAME_RE.match(low):
                raise ValueError(f"'{name}' is not an HTTP header name (pseudo-headers are not supported)")
            if not isinstance(value, str) or not value:
                raise ValueError(f"header '{name}' needs a value to match, or '*' for any value")
            out[low] = value
        return out


class Fault(Spec):
    match: RequestMatch = Field(default_factory=RequestMatch)
    delay: Delay | None = None
    abort: Abort | None = None

    @model_validator(mode="after")
    def _something(self) -> Fault:
        if self.delay is None and self.abort is None:
            raise ValueError("a fault needs a delay, an abort, or both")
        return self


class FaultInjectionConf(Spec):
    # each fault is its own Envoy fault filter, evaluated in order: a request may get several
    faults: list[Fault] = Field(min_length=1)


class FaultInjectionSpec(SelectorSpec):
    conf: FaultInjectionConf


def _checks(r: Resource) -> list[FieldProblem]:
    spec = spec_as(r, FaultInjectionSpec)
    return source_problems(spec.sources)


def _faults(r: Resource) -> str:
    spec = spec_as(r, FaultInjectionSpec)
    parts = []
    for f in spec.conf.faults:
        if f.delay is not None:
            parts.append(f"delay {f.delay.percentage:g}%")
        if f.abort is not None:
            parts.append(f"abort {f.abort.percentage:g}%")
    return ", ".join(parts)


def _targets(r: Resource) -> str:
    spec = spec_as(r, FaultInjectionSpec)
    return " ".join(d.describe() for d in spec.destinations)


KIND = KindInfo(
    kind="FaultInjection",
    plural="faultinjections",
    spec=FaultInjectionSpec,
    summary="Delay or abort a share of a service's requests (chaos testing), optionally only marked ones",
    is_policy=True,
    aliases=("fault", "faults"),
    validators=(_checks,),
    columns={"DESTINATIONS": _targets, "FAULTS": _faults},
)
