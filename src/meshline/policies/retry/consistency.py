"""Cross-resource check: a Retry's perTryTimeout must fit in the request timeout it runs under.

The two live in different resources (Retry, and a policy that sets the request timeout:
Timeout, seen through :class:`~meshline.policies.common.timeouts.SetsRequestTimeout`) and
the pair that applies depends on who calls whom, so the check walks the mesh's real
traffic: every dataplane's outbounds to HTTP/gRPC services, with the Retry and the
timeout policy that would win for each. It is Retry's ``MeshCheck``: the control plane
runs it when either is applied, over the mesh as the apply would leave it.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta

from meshline.core.dataplane import DEFAULT_PROTOCOL, DataplaneSpec, service_protocols
from meshline.core.errors import FieldProblem
from meshline.core.resource import Resource
from meshline.core.schema import format_duration
from meshline.core.selectors import Match, best_policy
from meshline.policies.common.timeouts import SetsRequestTimeout
from meshline.policies.retry.api import KIND, RetrySpec
from meshline.render.defaults import L7_PROTOCOLS, request_timeout
from meshline.render.policy_kind import MeshCheck, MeshView


def _per_try(retry: Match | None) -> timedelta | None:
    if retry is None or not isinstance(retry.policy.spec, RetrySpec):
        return None
    http = retry.policy.spec.conf.http
    return http.per_try_timeout if http else None


def _request_timeout(timeout: Match | None, protocol: str) -> tuple[timedelta, str]:
    """The request timeout that applies and where it comes from."""
    if timeout is not None and isinstance(timeout.policy.spec, SetsRequestTimeout):
        value = timeout.policy.spec.request_timeout()
        if value is not None:
            return value, f"{timeout.policy.kind} {timeout.policy.name}"
    return request_timeout(protocol), "the default"


def timeout_conflicts(res: Resource, resources: Iterable[Resource]) -> list[FieldProblem]:
    """Problems of ``res`` (a Retry or a timeout policy) among ``resources`` (one mesh, ``res`` included)."""
    items = list(resources)
    retries = [r for r in items if r.kind == KIND.kind]
    timeouts = [r for r in items if isinstance(r.spec, SetsRequestTimeout)]
    dataplanes = [r for r in items if isinstance(r.spec, DataplaneSpec)]
    protocols = service_protocols(dataplanes)
    for dp in dataplanes:
        assert isinstance(dp.spec, DataplaneSpec)
        callers = dp.spec.tag_sets()
        for outbound in dp.spec.outbound:
            protocol = protocols.get(outbound.service, DEFAULT_PROTOCOL)
            if protocol not in L7_PROTOCOLS:
                continue
            destination = {"service": outbound.service}
            retry = best_policy(retries, callers, destination)
            timeout = best_policy(timeouts, callers, destination)
            if retry is None or res.key not in {m.policy.key for m in (retry, timeout) if m}:
                continue
            per_try = _per_try(retry)
            request, source = _request_timeout(timeout, protocol)
            if per_try is None or request == timedelta(0) or per_try <= request:
                continue
            try_text, limit = format_duration(per_try), format_duration(request)
            where = f"{dp.name} -> {outbound.service}"
            if res.kind == KIND.kind:
                return [
                    FieldProblem(
                        "spec.conf.http.perTryTimeout",
                        f"{try_text} is longer than the request timeout {limit} ({source}) on {where}:"
                        " a try that times out leaves no time to retry; lower perTryTimeout below"
                        f" {limit} or raise http.requestTimeout with a Timeout policy",
                    )
                ]
            if timeout is None or timeout.policy.key != res.key or source == "the default":
                continue  # this policy does not set the request timeout: not its conflict
            return [
                FieldProblem(
                    "spec.conf.http.requestTimeout",
                    f"{limit} is shorter than perTryTimeout {try_text} of Retry {retry.policy.name} on {where}:"
                    f" a try that times out leaves no time to retry; raise requestTimeout above {try_text}"
                    " or lower the Retry's perTryTimeout",
                )
            ]
    return []


def _check(res: Resource, view: MeshView) -> list[FieldProblem]:
    if res.kind != KIND.kind and not isinstance(res.spec, SetsRequestTimeout):
        return []
    kinds = view.kinds | {res.kind}
    if KIND.kind not in kinds or "Dataplane" not in kinds:
        return []  # nothing to contradict: no retries, or nobody calling
    return timeout_conflicts(res, view.with_resource(res).resources.values())


# Runs on writes of a Retry, and of whichever kind sets the request timeout.
RETRY_TIMEOUTS = MeshCheck(_check, also=lambda res: isinstance(res.spec, SetsRequestTimeout))
