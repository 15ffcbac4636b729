"""Cross-resource check: a Retry's perTryTimeout must fit in the request timeout it runs under.

The two live in different resources (Retry, Timeout) and the pair that applies depends
on who calls whom, so the check walks the mesh's real traffic: every dataplane's
outbounds to HTTP/gRPC services, with the Retry and Timeout that would win for each.
It runs when either kind is applied, as a ControlPlaneContext validator.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from meshline.core.dataplane import DEFAULT_PROTOCOL, DataplaneSpec
from meshline.core.errors import FieldProblem, ValidationError
from meshline.core.resource import Resource, ResourceKey
from meshline.core.schema import format_duration
from meshline.core.selectors import Match, best_policy
from meshline.policies.retry.api import RetrySpec
from meshline.policies.timeout.api import DEFAULTS, TimeoutSpec
from meshline.render.envoy import H2_PROTOCOLS, L7_PROTOCOLS

if TYPE_CHECKING:
    from meshline.controlplane.context import ControlPlaneContext


def _protocols(dataplanes: Iterable[Resource]) -> dict[str, str]:
    """service -> protocol, as the renderer decides it (tcp when instances disagree)."""
    seen: dict[str, set[str]] = {}
    for dp in dataplanes:
        assert isinstance(dp.spec, DataplaneSpec)
        for inbound in dp.spec.inbound:
            seen.setdefault(inbound.service, set()).add(inbound.protocol)
    return {svc: protos.pop() if len(protos) == 1 else DEFAULT_PROTOCOL for svc, protos in seen.items()}


def _per_try(retry: Match | None) -> timedelta | None:
    if retry is None:
        return None
    spec = retry.policy.spec
    assert isinstance(spec, RetrySpec)
    return spec.conf.http.per_try_timeout if spec.conf.http else None


def _request_timeout(timeout: Match | None, protocol: str) -> tuple[timedelta, str]:
    """The request timeout that applies and where it comes from."""
    if timeout is not None:
        spec = timeout.policy.spec
        assert isinstance(spec, TimeoutSpec)
        if spec.conf.http and spec.conf.http.request_timeout is not None:
            return spec.conf.http.request_timeout, f"Timeout {timeout.policy.name}"
    return (DEFAULTS.h2_request if protocol in H2_PROTOCOLS else DEFAULTS.http_request), "the default"


def timeout_conflicts(res: Resource, resources: Iterable[Resource]) -> list[FieldProblem]:
    """Problems of ``res`` (a Retry or Timeout) among ``resources`` (one mesh, ``res`` included)."""
    items = list(resources)
    retries = [r for r in items if r.kind == "Retry"]
    timeouts = [r for r in items if r.kind == "Timeout"]
    dataplanes = [r for r in items if r.kind == "Dataplane"]
    protocols = _protocols(dataplanes)
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
            if res.kind == "Retry":
                return [
                    FieldProblem(
                        "spec.conf.http.perTryTimeout",
                        f"{try_text} is longer than the request timeout {limit} ({source}) on {where}:"
                        " a try that times out leaves no time to retry; lower perTryTimeout below"
                        f" {limit} or raise http.requestTimeout with a Timeout policy",
                    )
                ]
            if timeout is None or timeout.policy.key != res.key or source == "the default":
                continue  # this Timeout does not set the request timeout: not its conflict
            return [
                FieldProblem(
                    "spec.conf.http.requestTimeout",
                    f"{limit} is shorter than perTryTimeout {try_text} of Retry {retry.policy.name} on {where}:"
                    f" a try that times out leaves no time to retry; raise requestTimeout above {try_text}"
                    " or lower the Retry's perTryTimeout",
                )
            ]
    return []


def check_retry_timeouts(res: Resource, ctx: ControlPlaneContext, pending: Sequence[Resource]) -> None:
    """ControlPlaneContext validator: refuse a Retry or Timeout that would contradict the other."""
    if res.kind not in ("Retry", "Timeout"):
        return
    view = _mesh_view(ctx, res.mesh, pending)
    if "Retry" not in view.kinds | {res.kind} or "Dataplane" not in view.kinds:
        return  # nothing to contradict: no retries, or nobody calling
    current = view.resources if view.resources.get(res.key) is res else {**view.resources, res.key: res}
    problems = timeout_conflicts(res, current.values())
    if problems:
        raise ValidationError(problems, context=str(res.key))


@dataclass(frozen=True)
class _MeshView:
    pending: Sequence[Resource]  # held, so the identity check below cannot match a new list
    mesh: str
    revision: int
    resources: dict[ResourceKey, Resource]
    kinds: frozenset[str]


_VIEW = "retry-timeouts:view"


def _mesh_view(ctx: ControlPlaneContext, mesh: str, pending: Sequence[Resource]) -> _MeshView:
    """The mesh's resources with ``pending`` over them. One apply validates each of its
    documents against the same ``pending``: the view is built once per apply, not once per
    document (which made a 4,000-document apply quadratic: tens of seconds)."""
    cached = ctx.services.get(_VIEW)
    revision = ctx.reconciler.revision
    if (isinstance(cached, _MeshView) and cached.pending is pending and cached.mesh == mesh
            and cached.revision == revision):  # fmt: skip
        return cached
    current = dict(ctx.reconciler.resources.get(mesh, {}))
    for other in pending:
        if other.mesh == mesh:
            current[other.key] = other
    view = _MeshView(pending, mesh, revision, current, frozenset(r.kind for r in current.values()))
    if pending:
        ctx.services[_VIEW] = view
    return view
