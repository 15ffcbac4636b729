"""HealthCheck: the caller's sidecar probes every instance of a service and avoids failing ones.

    kind: HealthCheck
    mesh: default
    name: orders-health
    spec:
      destinations: [{match: {service: orders}}]
      conf:
        interval: 5s
        timeout: 1s
        unhealthyThreshold: 2
        healthyThreshold: 1
        http: {path: /health, expectedStatuses: [200, "300-399"]}
        passive: {unhealthyThreshold: 5, penaltyInterval: 30s}

Probes go to the instance's sidecar inbound port over the mesh's mTLS (the cluster's TLS
settings apply to health checks too), which forwards them to the app, so a stopped app
fails the check even though its sidecar still answers. Exactly one of ``http``, ``tcp``,
``grpc``; with none, HTTP/gRPC services get ``GET /`` accepting any status below 500
(the app answered) and TCP services a connect check.
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field, field_validator

from meshline.core.errors import FieldProblem
from meshline.core.resource import KindInfo, Resource, spec_as
from meshline.core.schema import Duration, Spec, format_duration
from meshline.core.selectors import SelectorSpec
from meshline.policies.common.fields import PositiveDuration, PositiveInt, service_only_destinations

StatusRange = tuple[int, int]  # [start, end), as Envoy's Int64Range


def parse_status(value: int | str) -> StatusRange:
    """200 -> (200, 201); "200-299" -> (200, 300): ranges are inclusive in YAML, half-open in Envoy."""
    if isinstance(value, int) and not isinstance(value, bool):
        low = high = value
    elif isinstance(value, str) and value.strip().isdigit():
        low = high = int(value)
    elif isinstance(value, str) and value.count("-") == 1 and all(p.strip().isdigit() for p in value.split("-")):
        low, high = (int(p) for p in value.split("-"))
    else:
        raise ValueError(f"'{value}' is not a status code or a range like '200-299'")
    if not 100 <= low <= high <= 599:
        raise ValueError(f"'{value}' must be status codes from 100 to 599, low to high")
    return low, high + 1


class HttpCheck(Spec):
    path: str = "/"
    host: str | None = None  # default: the cluster name (the service)
    expected_statuses: list[int | str] = Field(default_factory=lambda: list[int | str]([200]))

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError(f"must start with '/' (e.g. '/{v}')")
        return v

    @field_validator("expected_statuses")
    @classmethod
    def _statuses(cls, v: list[int | str]) -> list[int | str]:
        if not v:
            raise ValueError("must list at least one status, e.g. [200]")
        for item in v:
            parse_status(item)
        return v

    def ranges(self) -> list[StatusRange]:
        return [parse_status(s) for s in self.expected_statuses]


class TcpCheck(Spec):
    """Connect, optionally send ``send`` and expect each ``expect`` text in order in the reply."""

    send: str | None = None
    expect: list[str] = Field(default_factory=list)


class GrpcCheck(Spec):
    """The standard grpc.health.v1.Health/Check; the service must speak http2 or grpc."""

    service_name: str = ""
    authority: str | None = None


class Passive(Spec):
    """Eject an instance after consecutive failed answers to real traffic (outlier detection)."""

    unhealthy_threshold: PositiveInt = 5
    penalty_interval: PositiveDuration = timedelta(seconds=30)


class HealthCheckConf(Spec):
    interval: PositiveDuration = timedelta(seconds=10)
    timeout: PositiveDuration = timedelta(seconds=2)
    unhealthy_threshold: PositiveInt = 2
    healthy_threshold: PositiveInt = 1
    # Envoy probes idle clusters only every 60s by default; probing at ``interval`` means
    # the first request after a quiet spell does not land on a dead instance.
    no_traffic_interval: PositiveDuration | None = None  # default: interval
    initial_jitter: Duration | None = None
    interval_jitter: Duration | None = None
    http: HttpCheck | None = None
    tcp: TcpCheck | None = None
    grpc: GrpcCheck | None = None
    passive: Passive | None = None


class HealthCheckSpec(SelectorSpec):
    conf: HealthCheckConf = Field(default_factory=HealthCheckConf)


def _contradictions(res: Resource) -> list[FieldProblem]:
    spec = spec_as(res, HealthCheckSpec)
    conf = spec.conf
    problems = []
    kinds = [name for name in ("http", "tcp", "grpc") if getattr(conf, name) is not None]
    if len(kinds) > 1:
        problems.append(
            FieldProblem(
                f"spec.conf.{kinds[1]}",
                f"a health check is one of http, tcp or grpc, and {kinds[0]} is set too; keep one",
            )
        )
    if conf.tcp is not None and conf.tcp.expect and not conf.tcp.send:
        problems.append(
            FieldProblem("spec.conf.tcp.send", "is required with expect: the check must send something first")
        )
    if conf.initial_jitter is not None and conf.initial_jitter > conf.interval:
        problems.append(
            FieldProblem(
                "spec.conf.initialJitter",
                f"is longer than interval {format_duration(conf.interval)}; lower it",
            )
        )
    return problems


def _type_column(r: Resource) -> str:
    spec = spec_as(r, HealthCheckSpec)
    conf = spec.conf
    active = next((n for n in ("http", "tcp", "grpc") if getattr(conf, n) is not None), "auto")
    return active + ("+passive" if conf.passive else "")


def _interval_column(r: Resource) -> str:
    spec = spec_as(r, HealthCheckSpec)
    return format_duration(spec.conf.interval)


KIND = KindInfo(
    kind="HealthCheck",
    plural="healthchecks",
    spec=HealthCheckSpec,
    summary="Active HTTP/TCP/gRPC health checks of a service's instances, plus passive checks",
    is_policy=True,
    aliases=("health-check", "health-checks", "hc"),
    validators=(service_only_destinations, _contradictions),
    columns={"CHECK": _type_column, "INTERVAL": _interval_column},
)
