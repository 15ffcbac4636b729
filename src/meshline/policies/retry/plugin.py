"""Retry configurer: the retry policy of every route (replacing the base connect-failure retries),
the retry budget on every cluster of the outbound, and connect attempts for TCP."""

from __future__ import annotations

from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from google.protobuf import wrappers_pb2

from meshline.core.schema import format_duration
from meshline.policies.common.sections import (
    clusters,
    default_thresholds,
    inherits_default,
    proto_duration,
    route_actions,
)
from meshline.policies.retry.api import (
    DEFAULT_GRPC_RETRY_ON,
    DEFAULT_HTTP_RETRY_ON,
    KIND,
    STATUS_CODES_CONDITION,
    HttpRetry,
    RetrySpec,
    TcpRetry,
)
from meshline.policies.retry.consistency import RETRY_TIMEOUTS
from meshline.render import envoy
from meshline.render.mesh_snapshot import MeshSnapshot
from meshline.render.policy_kind import Merge, PolicyKind, Resolved, record
from meshline.render.sections import OutboundSection

# Re-pick a host this many times to avoid the one that just failed (no effect with one instance).
HOST_SELECTION_ATTEMPTS = 3


def retry_policy(http: HttpRetry, protocol: str) -> route_components_pb2.RetryPolicy:
    conditions: list[str] = list(
        http.retry_on or (DEFAULT_GRPC_RETRY_ON if protocol == "grpc" else DEFAULT_HTTP_RETRY_ON)
    )
    if http.retriable_status_codes and STATUS_CODES_CONDITION not in conditions:
        conditions.append(STATUS_CODES_CONDITION)  # retryOn left to its default: codes imply it
    policy = route_components_pb2.RetryPolicy(
        retry_on=",".join(dict.fromkeys(conditions)),
        num_retries=wrappers_pb2.UInt32Value(value=http.attempts - 1),
        retriable_status_codes=http.retriable_status_codes,
        host_selection_retry_max_attempts=HOST_SELECTION_ATTEMPTS,
        retry_host_predicate=[
            route_components_pb2.RetryPolicy.RetryHostPredicate(
                name="envoy.retry_host_predicates.previous_hosts",
                typed_config=envoy.packed(previous_hosts_pb2.PreviousHostsPredicate()),
            )
        ],
    )
    if http.per_try_timeout is not None:
        policy.per_try_timeout.CopyFrom(proto_duration(http.per_try_timeout))
    backoff = http.backoff
    policy.retry_back_off.base_interval.CopyFrom(proto_duration(backoff.base_interval))
    policy.retry_back_off.max_interval.CopyFrom(proto_duration(backoff.max_interval or backoff.base_interval * 10))
    return policy


def _configure_http(section: OutboundSection, http: HttpRetry) -> str:
    policy = retry_policy(http, section.protocol)
    for action in route_actions(section):
        if inherits_default(section, action, "retry_policy"):
            action.retry_policy.CopyFrom(policy)
    if not http.budget.disabled:
        for cluster in clusters(section):
            budget = default_thresholds(cluster).retry_budget
            budget.budget_percent.value = http.budget.percent
            budget.min_retry_concurrency.value = http.budget.min_retry_concurrency
    if http.per_try_timeout is not None:
        per_try = http.per_try_timeout.total_seconds()
        for action in route_actions(section):
            total = action.timeout.ToTimedelta().total_seconds() if action.HasField("timeout") else 0
            if total and per_try > total:
                return (
                    f"perTryTimeout {format_duration(http.per_try_timeout)} exceeds the request timeout"
                    f" {format_duration(action.timeout.ToTimedelta())}: only the first try can use it"
                )
    return ""


def configure(section: OutboundSection, resolved: Resolved[RetrySpec], mesh: MeshSnapshot) -> None:
    matched = resolved.best
    note = ""
    if section.http is not None:
        note = _configure_http(section, matched.spec.conf.http or HttpRetry())
    elif section.tcp is not None:
        tcp = matched.spec.conf.tcp or TcpRetry()
        section.tcp.max_connect_attempts.value = tcp.max_connect_attempts
    record(section, matched, note)


POLICY = PolicyKind(
    info=KIND,
    spec=RetrySpec,
    merge=Merge.MOST_SPECIFIC,
    shapes=frozenset({"route", "cluster"}),
    outbound=configure,
    # After Timeout: compares the per-try timeout with the request timeout it set.
    after=("Timeout",),
    mesh_checks=(RETRY_TIMEOUTS,),
    explains=frozenset({"retry"}),
)
