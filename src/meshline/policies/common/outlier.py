"""Outlier detection: CircuitBreaker's schema for it, and the Envoy proto both it and
HealthCheck's passive check render (HealthCheck builds an :class:`OutlierDetection`)."""

from __future__ import annotations

from datetime import timedelta

from envoy.config.cluster.v3 import outlier_detection_pb2
from google.protobuf import wrappers_pb2
from pydantic import Field, field_validator

from meshline.core.schema import Spec
from meshline.policies.common.fields import Percent, PositiveDuration, PositiveInt
from meshline.policies.common.sections import proto_duration

DEFAULT_CONSECUTIVE_5XX = 5


class SuccessRate(Spec):
    """Eject hosts whose success rate is below mean - factor x stdev of all hosts (per interval)."""

    minimum_hosts: PositiveInt = 5
    request_volume: PositiveInt = 100
    standard_deviation_factor: float = 1.9

    @field_validator("standard_deviation_factor")
    @classmethod
    def _factor(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("must be greater than 0 (Envoy's default is 1.9)")
        return v


class FailurePercentage(Spec):
    """Eject hosts whose failure percentage (per interval) is at least ``threshold``."""

    threshold: Percent = 85
    minimum_hosts: PositiveInt = 5
    request_volume: PositiveInt = 50


class OutlierDetection(Spec):
    interval: PositiveDuration = timedelta(seconds=10)
    base_ejection_time: PositiveDuration = timedelta(seconds=30)  # x number of ejections so far
    max_ejection_time: PositiveDuration | None = None  # Envoy default 300s
    max_ejection_percent: Percent = 10  # at least one host is always ejectable
    # Count connect failures, timeouts and resets (local origin) apart from upstream answers.
    split_external_local_origin_errors: bool = False
    consecutive_5xx: PositiveInt | None = Field(default=None, alias="consecutive5xx")
    consecutive_gateway_failures: PositiveInt | None = None  # 502, 503, 504 only
    consecutive_local_origin_failures: PositiveInt | None = None  # needs the split
    success_rate: SuccessRate | None = None
    failure_percentage: FailurePercentage | None = None

    def has_detector(self) -> bool:
        return any(
            d is not None
            for d in (
                self.consecutive_5xx,
                self.consecutive_gateway_failures,
                self.consecutive_local_origin_failures,
                self.success_rate,
                self.failure_percentage,
            )
        )


ENFORCED, OFF = 100, 0


def _u32(value: int) -> wrappers_pb2.UInt32Value:
    return wrappers_pb2.UInt32Value(value=value)


def outlier_detection(od: OutlierDetection) -> outlier_detection_pb2.OutlierDetection:
    """Only the listed detectors enforce: Envoy's own defaults would also enforce success rate."""
    consecutive_5xx = od.consecutive_5xx
    if not od.has_detector():
        consecutive_5xx = DEFAULT_CONSECUTIVE_5XX
    split = od.split_external_local_origin_errors
    out = outlier_detection_pb2.OutlierDetection(
        interval=proto_duration(od.interval),
        base_ejection_time=proto_duration(od.base_ejection_time),
        max_ejection_percent=_u32(round(od.max_ejection_percent)),
        split_external_local_origin_errors=split,
        consecutive_5xx=_u32(consecutive_5xx or DEFAULT_CONSECUTIVE_5XX),
        enforcing_consecutive_5xx=_u32(ENFORCED if consecutive_5xx else OFF),
        consecutive_gateway_failure=_u32(od.consecutive_gateway_failures or DEFAULT_CONSECUTIVE_5XX),
        enforcing_consecutive_gateway_failure=_u32(ENFORCED if od.consecutive_gateway_failures else OFF),
        enforcing_consecutive_local_origin_failure=_u32(
            ENFORCED if od.consecutive_local_origin_failures else OFF
        ),
        enforcing_success_rate=_u32(ENFORCED if od.success_rate else OFF),
        enforcing_local_origin_success_rate=_u32(ENFORCED if od.success_rate and split else OFF),
        enforcing_failure_percentage=_u32(ENFORCED if od.failure_percentage else OFF),
        enforcing_failure_percentage_local_origin=_u32(ENFORCED if od.failure_percentage and split else OFF),
    )
    if od.max_ejection_time is not None:
        out.max_ejection_time.CopyFrom(proto_duration(od.max_ejection_time))
    if od.consecutive_local_origin_failures:
        out.consecutive_local_origin_failure.value = od.consecutive_local_origin_failures
    if od.success_rate:
        out.success_rate_minimum_hosts.value = od.success_rate.minimum_hosts
        out.success_rate_request_volume.value = od.success_rate.request_volume
        out.success_rate_stdev_factor.value = round(od.success_rate.standard_deviation_factor * 1000)
    if od.failure_percentage:
        out.failure_percentage_threshold.value = round(od.failure_percentage.threshold)
        out.failure_percentage_minimum_hosts.value = od.failure_percentage.minimum_hosts
        out.failure_percentage_request_volume.value = od.failure_percentage.request_volume
    return out


