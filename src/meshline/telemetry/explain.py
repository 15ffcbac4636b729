"""Why a request failed, in plain words: Envoy's response flags and details plus what the
control plane knows (policies, instances), turned into one sentence.

Pure functions over a :class:`~meshline.telemetry.record.LogRecord`; no I/O. The table
:data:`FLAGS` lists every response flag Envoy 1.40 reports; :func:`explain` picks the most
telling cause when several are set (a denial before a timeout before a retry summary).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache

from meshline.policies import kinds as policy_kinds
from meshline.render.policy_kind import Cause
from meshline.telemetry.record import GRPC_CODES, INBOUND, OUTBOUND, LogRecord, is_failure
from meshline.xds import names


@dataclass(frozen=True)
class Flag:
    code: str  # %RESPONSE_FLAGS% short code
    field: str  # envoy.data.accesslog.v3.ResponseFlags field
    meaning: str  # one line for docs and `meshline explain`


FLAGS: tuple[Flag, ...] = (
    Flag("LH", "failed_local_healthcheck", "the local health check failed"),
    Flag("UH", "no_healthy_upstream", "no healthy instance to send to"),
    Flag("UT", "upstream_request_timeout", "the request timed out"),
    Flag("LR", "local_reset", "the sidecar reset the stream"),
    Flag("UR", "upstream_remote_reset", "the upstream reset the stream"),
    Flag("UF", "upstream_connection_failure", "could not connect to the upstream"),
    Flag("UC", "upstream_connection_termination", "the upstream closed the connection"),
    Flag("UO", "upstream_overflow", "circuit breaker open (too many connections or requests)"),
    Flag("NR", "no_route_found", "no route matched"),
    Flag("DI", "delay_injected", "a fault-injection delay was added"),
    Flag("FI", "fault_injected", "a fault-injection abort answered"),
    Flag("RL", "rate_limited", "rate limited"),
    Flag("UAEX", "unauthorized_details", "denied by external authorization"),
    Flag("RLSE", "rate_limit_service_error", "the rate limit service failed"),
    Flag("DC", "downstream_connection_termination", "the caller closed the connection"),
    Flag("URX", "upstream_retry_limit_exceeded", "retries exhausted"),
    Flag("SI", "stream_idle_timeout", "the stream was idle too long"),
    Flag("IH", "invalid_envoy_request_headers", "invalid x-envoy-* request headers"),
    Flag("DPE", "downstream_protocol_error", "the caller spoke invalid HTTP"),
    Flag("UMSDR", "upstream_max_stream_duration_reached", "the stream reached its maximum duration"),
    Flag("RFCF", "response_from_cache_filter", "answered from cache"),
    Flag("NFCF", "no_filter_config_found", "a filter's configuration was missing"),
    Flag("DT", "duration_timeout", "the request reached its maximum duration"),
    Flag("UPE", "upstream_protocol_error", "the upstream spoke invalid HTTP"),
    Flag("NC", "no_cluster_found", "the route's cluster does not exist"),
    Flag("OM", "overload_manager", "the sidecar is overloaded and shed the request"),
    Flag("DF", "dns_resolution_failure", "DNS resolution failed"),
    Flag("DR", "downstream_remote_reset", "the caller reset the stream"),
)
FLAG_BY_FIELD = {f.field: f for f in FLAGS}
FLAG_BY_CODE = {f.code: f for f in FLAGS}


@dataclass(frozen=True)
class EndpointCounts:
    """The destination's instances as the control plane knows them when the entry arrives."""

    registered: int  # Dataplanes with an inbound of the service (in the mesh)
    offline: int  # of those, not ready or known gone (left out of every sidecar's endpoints)
    in_cluster: int | None = None  # endpoints the logging sidecar was given for the cluster


@dataclass(frozen=True)
class ExplainContext:
    endpoints: EndpointCounts | None = None
    # "Kind/name" of policies on the logging section, for entries that carry none themselves.
    policies: tuple[str, ...] = ()
    outlier_detection: bool = False  # the cluster has outlier detection configured
    # "backend inventroy has no instances (HTTPRoute to-inventory; ...)": routes on the logging
    # section that send to a service nobody serves
    missing_backends: tuple[str, ...] = ()
    # the destination is an ExternalService: its target ("api.example.com:443"), and the egress
    # gateway its traffic goes through ("" when direct)
    external: str = ""
    egress_gateway: str = ""
    # what refuses the caller there ("TrafficPermission NAME", or the mesh default); "" if nothing
    egress_refused_by: str = ""


EMPTY = ExplainContext()

# The RBAC policy TrafficPermission renders for "deny what nothing allows".
DEFAULT_DENY_RULE = names.DEFAULT_PERMISSION_POLICY
_RBAC_RE = re.compile(r"rbac_access_denied_matched_policy\[([^\]]*)\]")


def explain(r: LogRecord, ctx: ExplainContext = EMPTY) -> str:
    """One sentence saying why ``r`` failed (or was shaped by a fault delay); "" if it did not."""
    flags = set(r.flags)
    policies = list(r.policies) or list(ctx.policies)
    cause = _cause(r, flags, policies, ctx)
    if not cause:
        return ""
    extra = []
    if "URX" in flags and r.attempts > 1:
        extra.append(f"gave up after {r.attempts} attempts{_named(policies, 'retry')}")
    elif "URX" in flags:
        extra.append(f"retries exhausted{_named(policies, 'retry')}")
    elif r.attempts > 1:
        extra.append(f"after {r.attempts} attempts{_named(policies, 'retry')}")
    if "DI" in flags and not cause.startswith("delay injected"):
        extra.append(f"delay injected{_named(policies, 'fault')}")
    return "; ".join([cause, *extra])


def explain_pair(outbound: LogRecord, inbound: LogRecord | None) -> str:
    """The explanation of a meshed call from both halves.

    When the caller's sidecar only saw an error status come back, the callee's sidecar
    knows why (a denial, a refused connection to the app, a local rate limit): use it.
    """
    if inbound is None or not _answered_by_upstream(outbound):
        return outbound.explanation
    if inbound.explanation and (inbound.flags or _local_reply(inbound)):
        return f"{inbound.explanation} (at {inbound.destination or 'the callee'}'s sidecar)"
    return outbound.explanation


def explain_request(records: Sequence[LogRecord]) -> str:
    """The explanation of a whole request from all its entries (in call order).

    When the apps pass the request id (or the trace) on, one request spans several hops;
    a failure usually surfaces at the first hop but starts at the deepest failing one, so
    both are named: "orders answered 502, after orders -> inventory failed: no healthy ...".
    """
    def half(r: LogRecord, direction: str) -> LogRecord | None:
        return next((o for o in records if o.direction == direction and o.source == r.source
                     and o.destination == r.destination), None)

    hops: list[tuple[LogRecord, str]] = []
    for r in records:
        if r.direction == INBOUND:
            if half(r, OUTBOUND) is None:  # no caller's half (unmeshed caller, or not in yet)
                hops.append((r, r.explanation))
            continue
        inbound = half(r, INBOUND)
        hops.append((r, explain_pair(r, inbound) if inbound is not None else r.explanation))
    failing = [(r, text) for r, text in hops if text and (r.failed or r.status >= 400)]
    if not failing:
        return next((text for _, text in hops if text), "")
    (first, first_text), (deepest, deepest_text) = failing[0], failing[-1]
    if first is deepest:
        return first_text
    return f"{first_text}, after {deepest.source} -> {deepest.destination} failed: {deepest_text}"


def _answered_by_upstream(r: LogRecord) -> bool:
    return not r.flags and r.details in ("via_upstream", "")


def _local_reply(r: LogRecord) -> bool:
    return bool(r.details) and r.details not in ("via_upstream", "direct_response")


def _cause(r: LogRecord, flags: set[str], policies: Sequence[str], ctx: ExplainContext) -> str:
    dest = r.destination or "the upstream"
    details = r.details
    mode = names.blocked_mode(r.section)
    if mode is not None:  # the transparent listener's chain of refused destinations
        return blocked(r.authority or "the destination", r.mesh, mode)
    rbac = _RBAC_RE.search(details)
    if rbac:
        return _denied(r, rbac.group(1), policies)
    if details.startswith("rbac_access_denied"):
        return f"denied by {_kinds_or(policies, 'permission', 'an authorization policy')}"
    if details.startswith("jwt_authn_access_denied"):  # "jwt_authn_access_denied{Jwt_is_expired}"
        reason = details[len("jwt_authn_access_denied"):].strip("{}").replace("_", " ") or "no valid token"
        if "fetch" in reason.lower():  # "Jwks remote fetch is failed": the proxy's fault, not the caller's
            return ("not authenticated: the proxy could not fetch the JWKS (the issuer's keys) from its uri,"
                    " so no token can be verified; check the uri, its ca and that the proxy's host reaches it"
                    + _named(policies, "authentication"))  # fmt: skip
        return (f"not authenticated: {reason}; send a valid token (Authorization: Bearer ...)"
                + _named(policies, "authentication"))
    if "UAEX" in flags or details.startswith("ext_authz"):
        return "denied by external authorization" + (f" ({details})" if details else "")
    if "RL" in flags or details in ("local_rate_limited", "request_rate_limited"):
        scope = " (local limit)" if details == "local_rate_limited" else ""
        return f"rate limited{scope}{_named(policies, 'rate-limit')}"
    if "RLSE" in flags:
        return f"the rate limit service could not be reached{_named(policies, 'rate-limit')}"
    if "FI" in flags or details == "fault_filter_abort":
        what = f"aborted with {r.status}" if r.status else "aborted"
        return f"fault injected: {what}{_named(policies, 'fault')}"
    if "NR" in flags or details in ("route_not_found", "filter_chain_not_found"):
        target = f" {r.method} {r.path}".rstrip() if r.method or r.path else ""
        return f"no route for{target or ' this request'} to {dest}{_named(policies, 'route')}"
    if "NC" in flags or details == "cluster_not_found":
        return f"the route points at cluster {r.upstream_cluster or '?'}, which does not exist"
    if "UH" in flags or details == "no_healthy_upstream":
        if ctx.missing_backends:
            return "; ".join(ctx.missing_backends)
        if ctx.egress_gateway:
            return f"no healthy instance of {dest}: its traffic goes through egress gateway {ctx.egress_gateway}, which has no ready instance"
        if ctx.external:
            return f"no address for ExternalService {dest} ({ctx.external}): its host did not resolve, or passthrough is none"
        return f"no healthy instance of {dest}{_why_unhealthy(r, policies, ctx)}"
    if "UO" in flags or "overflow" in details:
        return f"circuit breaker open: too many connections or requests to {dest}{_named(policies, 'circuit-breaker')}"
    if "UT" in flags or details in ("upstream_response_timeout", "upstream_per_try_timeout"):
        return _timeout(r, details, policies)
    if "UF" in flags or "connection_failure" in details:
        return _connect_failure(r) + _external_hint(r, ctx)
    if "UC" in flags or "connection_termination" in details:
        if ctx.egress_gateway and ctx.egress_refused_by:
            return (f"refused by egress gateway {ctx.egress_gateway}: {ctx.egress_refused_by} denies"
                    f" {r.source or 'this caller'} -> {dest}")  # fmt: skip
        return f"{_upstream(r)} closed the connection before answering"
    if "UR" in flags or "remote_reset" in details:
        return f"{_upstream(r)} reset the stream"
    if "UPE" in flags or ("protocol_error" in details and "downstream" not in details):
        return f"{_upstream(r)} sent an invalid response (protocol error)"
    if "LR" in flags:
        return f"the sidecar reset the stream ({details or 'local reset'})"
    if "SI" in flags:
        return f"the stream was idle too long and was closed{_named(policies, 'timeout')}"
    if "DT" in flags or "UMSDR" in flags:
        return f"the request reached its maximum duration{_named(policies, 'timeout')}"
    if "DC" in flags or "DR" in flags or details.startswith("downstream_remote"):
        return f"the caller ({r.source or 'client'}) went away after {_ms(r.duration_ms)}, before the response"
    if "DPE" in flags:
        return "the caller sent an invalid HTTP request (protocol error)"
    if "IH" in flags:
        return "the caller sent invalid x-envoy-* headers"
    if "OM" in flags:
        return "the sidecar is overloaded and shed the request (overload manager)"
    if "DF" in flags:
        return f"could not resolve {dest}'s address (DNS)"
    if "LH" in flags:
        return "the sidecar failed its local health check"
    if "NFCF" in flags:
        return "a filter's configuration was missing (the sidecar has not received it yet)"
    if details == "direct_response":
        return f"answered {r.status} by the sidecar's direct response (route {r.route or '?'})" if r.status >= 400 else ""
    if "DI" in flags:
        return f"delay injected{_named(policies, 'fault')}"
    if r.grpc_status not in (None, 0) and (is_failure(r) or r.status >= 400 or r.grpc_status):
        code = GRPC_CODES.get(r.grpc_status or 0, str(r.grpc_status))
        return f"{_answerer(r)} answered gRPC {code} ({r.grpc_status})"
    if r.status >= 400 or (r.status == 0 and r.protocol == "http"):
        if r.status == 0:
            return f"no response ({details})" if details else "no response"
        return f"{_answerer(r)} answered {r.status}"
    return ""


def blocked(host: str, mesh: str, mode: str) -> str:
    """Why a connection to ``host`` was refused by the mesh's passthrough mode."""
    if mode == "none":
        return f"blocked: {host} is outside mesh {mesh} and passthrough is none (nothing leaves the mesh)"
    return f"blocked: {host} is not an ExternalService of mesh {mesh} and passthrough is {mode}"


def _denied(r: LogRecord, rule: str, policies: Sequence[str]) -> str:
    if rule in ("", "none", DEFAULT_DENY_RULE):
        src = r.source or "the caller"
        why = " (the mesh denies by default)" if rule == DEFAULT_DENY_RULE else ""
        return f"denied: no TrafficPermission allows {src} -> {r.destination}{why}"
    for p in policies:
        kind, _, name = p.partition("/")
        if name == rule or rule.startswith(name + "_") or rule.endswith("_" + name):
            return f"denied by {kind} {name}"
    return f"denied by TrafficPermission {rule}"


def _why_unhealthy(r: LogRecord, policies: Sequence[str], ctx: ExplainContext) -> str:
    eps = ctx.endpoints
    if eps is None:
        return ""
    if eps.registered == 0:
        return " (no instance is registered)"
    online = eps.registered - eps.offline
    if online == 0:
        return f" (all {eps.registered} offline)" if eps.registered > 1 else " (its only instance is offline)"
    if eps.in_cluster == 0:
        return f" ({online} online, but none matches {r.upstream_cluster or 'the route'}'s subset)"
    offline = f", {eps.offline} offline" if eps.offline else ""
    if ctx.outlier_detection or _find(policies, 'circuit-breaker'):
        how = "ejected by outlier detection"
        if _find(policies, 'health-check'):
            how = "ejected by outlier detection or failing health checks"
        return f" ({online} {how}{_named(policies, 'circuit-breaker')}{offline})"
    if _find(policies, 'health-check'):
        return f" ({online} failing health checks{_named(policies, 'health-check')}{offline})"
    return f" ({online} online, but the caller's sidecar had none healthy: not told yet, or failing checks{offline})"


def _timeout(r: LogRecord, details: str, policies: Sequence[str]) -> str:
    per_try = details == "upstream_per_try_timeout"
    configured = r.per_try_timeout_ms if per_try else r.route_timeout_ms
    after = _ms(configured) if configured else _ms(r.duration_ms)
    who = _named(policies, 'retry' if per_try else "timeout")
    if per_try:
        return f"an attempt timed out after {after}{who}"
    if not who and configured:
        who = " (the default route timeout)" if not _find(policies, 'route') else _named(policies, 'route')
    return f"timed out after {after}{who}"


def _connect_failure(r: LogRecord) -> str:
    reason = r.transport_failure.replace("_", " ").strip()
    low = reason.lower()
    target = r.upstream_host or "the upstream"
    if r.direction == INBOUND:
        target = f"the app at {r.upstream_host}" if r.upstream_host else "the app"
        hint = f" (is {r.destination} running?)" if r.destination else ""
    else:
        hint = f" ({r.destination_instance})" if r.destination_instance else ""
    if "refused" in low or re.search(r"\b111\b", low):
        return f"upstream connection refused by {target}{hint}"
    if "timed out" in low or "timeout" in low or re.search(r"\b110\b", low):
        return f"connecting to {target} timed out{hint}"
    if any(w in low for w in ("tls", "ssl", "certificate", "handshake", "verify")):
        return f"TLS handshake with {target} failed ({reason}){hint}"
    if "unreachable" in low or "no route to host" in low or re.search(r"\b11[13]\b", low):
        return f"{target} is unreachable ({reason}){hint}"
    return f"could not connect to {target}{hint}" + (f" ({reason})" if reason else "")


def _external_hint(r: LogRecord, ctx: ExplainContext) -> str:
    """What to check when the sidecar (or the egress gateway) could not reach an ExternalService."""
    if not ctx.external or "TLS handshake" not in _connect_failure(r):
        return ""
    return f"; check ExternalService {r.destination}'s spec.tls (its CA bundle and the server name {ctx.external} must present)"


def _upstream(r: LogRecord) -> str:
    if r.direction == INBOUND:
        return f"the app ({r.destination})" if r.destination else "the app"
    name = r.destination or "the upstream"
    return f"{name} ({r.upstream_host})" if r.upstream_host else name


def _answerer(r: LogRecord) -> str:
    who = r.destination or "the upstream"
    inst = (r.destination_instance or r.dataplane) if r.direction == INBOUND else r.destination_instance
    return f"{who} ({inst})" if inst else who


@cache
def _blamed(cause: Cause) -> frozenset[str]:
    """The policy kinds that declare they can cause ``cause`` (PolicyKind.explains)."""
    return frozenset(k.name for k in policy_kinds() if cause in k.explains)


def _find(policies: Iterable[str], cause: Cause) -> list[str]:
    out = []
    for p in policies:
        kind, _, name = p.partition("/")
        if kind in _blamed(cause):
            out.append(f"{kind} {name}")
    return out


def _named(policies: Iterable[str], cause: Cause) -> str:
    found = _find(policies, cause)
    return f" ({', '.join(found)})" if found else ""


def _kinds_or(policies: Iterable[str], cause: Cause, default: str) -> str:
    found = _find(policies, cause)
    return ", ".join(found) if found else default


def _ms(ms: float | None) -> str:
    if ms is None:
        return "?"
    if ms < 1000:
        return f"{ms:.0f}ms"
    s = ms / 1000
    return f"{s:.0f}s" if abs(s - round(s)) < 0.05 else f"{s:.1f}s"
