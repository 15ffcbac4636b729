"""RateLimit on the destination's inbound: Envoy filters per caller rule (see policies.common.callers).

* local, HTTP: ``envoy.filters.http.local_ratelimit``, a token bucket per sidecar
  (``requests`` tokens, refilled every ``interval``); for a named caller the bucket is a
  descriptor that only that caller's requests produce.
* local, TCP: ``envoy.filters.network.local_ratelimit`` (new connections per interval,
  every caller; TCP carries no identity header to tell callers apart).
* global, HTTP: ``envoy.filters.http.ratelimit`` asking Meshline's rate-limit service
  (on the control plane, through :func:`names.ratelimit_cluster`) with one descriptor
  that names the policy, the destination service, the caller rule and the limit.
"""

from __future__ import annotations

import math

from envoy.config.core.v3 import base_pb2, config_source_pb2, grpc_service_pb2
from envoy.config.ratelimit.v3 import rls_pb2 as rls_config_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2 as common_rl_pb2
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2
from envoy.extensions.filters.http.ratelimit.v3 import rate_limit_pb2
from envoy.extensions.filters.network.local_ratelimit.v3 import local_rate_limit_pb2 as tcp_local_pb2
from envoy.type.v3 import http_status_pb2, percent_pb2, token_bucket_pb2
from google.protobuf import wrappers_pb2

from meshline.core.resource import spec_as
from meshline.core.selectors import ANY
from meshline.policies.common.callers import ONE_PER_CALLER, CallerRule, caller_rules
from meshline.policies.ratelimit.api import KIND, ConnectionRate, GlobalConf, RateLimitSpec, RequestRate
from meshline.render import envoy
from meshline.render.mesh_snapshot import MeshSnapshot, destination_services
from meshline.render.policy_kind import Merge, PolicyKind, Resolved
from meshline.render.sections import ORDER_RATELIMIT, InboundSection
from meshline.xds import names
from meshline.xds import rls_descriptor as d
from meshline.xds.rls_descriptor import Limit

ORDER_LOCAL = ORDER_RATELIMIT  # cheap, per instance: first, so it also shields the global service
ORDER_GLOBAL = ORDER_RATELIMIT + 1

Action = route_components_pb2.RateLimit.Action
DRAFT_03 = common_rl_pb2.XRateLimitHeadersRFCVersion.DRAFT_VERSION_03


def _bucket(count: int, seconds: float) -> token_bucket_pb2.TokenBucket:
    b = token_bucket_pb2.TokenBucket(max_tokens=count, tokens_per_fill=wrappers_pb2.UInt32Value(value=count))
    b.fill_interval.FromMilliseconds(round(seconds * 1000))
    return b


def _all_requests() -> base_pb2.RuntimeFractionalPercent:
    return base_pb2.RuntimeFractionalPercent(
        default_value=percent_pb2.FractionalPercent(
            numerator=100, denominator=percent_pb2.FractionalPercent.HUNDRED
        )
    )


def _caller_action(rule: CallerRule, mesh: MeshSnapshot) -> route_components_pb2.RateLimit.Action:
    """The descriptor entry ``source_service``: produced only by requests this rule is for."""
    value = rule.service or "*"
    matcher = rule.identity_matcher(mesh)
    if matcher is None:
        return Action(generic_key=Action.GenericKey(descriptor_key=d.SOURCE_KEY, descriptor_value=value))
    return Action(
        header_value_match=Action.HeaderValueMatch(
            descriptor_key=d.SOURCE_KEY, descriptor_value=value, headers=[matcher]
        )
    )


def local_http_filter(
    rule: CallerRule, rate: RequestRate, mesh: MeshSnapshot, port: int, grpc: bool
) -> local_rate_limit_pb2.LocalRateLimit:
    seconds = rate.interval.total_seconds()
    bucket = _bucket(rate.requests, seconds)
    f = local_rate_limit_pb2.LocalRateLimit(
        stat_prefix=names.ratelimit_stat_prefix(port),
        filter_enabled=_all_requests(),
        filter_enforced=_all_requests(),
        enable_x_ratelimit_headers=DRAFT_03,
        # a caller with its own bucket does not also drain the shared one
        always_consume_default_token_bucket=wrappers_pb2.BoolValue(value=False),
        rate_limited_as_resource_exhausted=grpc,
        response_headers_to_add=[
            base_pb2.HeaderValueOption(
                header=base_pb2.HeaderValue(key="retry-after", value=str(max(1, math.ceil(seconds)))),
                append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
            )
        ],
    )
    if rule.identity_matcher(mesh) is None:
        f.token_bucket.CopyFrom(bucket)  # every request: the filter's own bucket
    else:
        f.rate_limits.append(route_components_pb2.RateLimit(actions=[_caller_action(rule, mesh)]))
        f.descriptors.append(
            common_rl_pb2.LocalRateLimitDescriptor(
                entries=[
                    common_rl_pb2.RateLimitDescriptor.Entry(key=d.SOURCE_KEY, value=rule.service or "*")
                ],
                token_bucket=bucket,
            )
        )
    return f


def global_limit(conf: GlobalConf) -> Limit:
    return Limit(conf.requests, conf.window_s, conf.algorithm)


def global_http_filter(
    rule: CallerRule, conf: GlobalConf, mesh: MeshSnapshot, service: str, grpc: bool
) -> rate_limit_pb2.RateLimit:
    actions: list[route_components_pb2.RateLimit.Action] = [
        Action(generic_key=Action.GenericKey(descriptor_key=d.POLICY_KEY, descriptor_value=rule.policy.name)),
        Action(generic_key=Action.GenericKey(descriptor_key=d.DESTINATION_KEY, descriptor_value=service)),
        _caller_action(rule, mesh),
    ]
    if conf.per_header:
        actions.append(
            Action(
                request_headers=Action.RequestHeaders(
                    header_name=conf.per_header,
                    descriptor_key=d.HEADER_KEY_PREFIX + conf.per_header,
                    skip_if_absent=True,  # without the header: one shared counter
                )
            )
        )
    if conf.per_path:
        actions.append(
            Action(
                request_headers=Action.RequestHeaders(
                    header_name=":path", descriptor_key=d.PATH_KEY, skip_if_absent=True
                )
            )
        )
    actions.append(
        Action(
            generic_key=Action.GenericKey(
                descriptor_key=d.LIMIT_KEY, descriptor_value=global_limit(conf).encode()
            )
        )
    )
    f = rate_limit_pb2.RateLimit(
        domain=names.ratelimit_domain(mesh.name),
        failure_mode_deny=conf.failure_mode == "closed",
        enable_x_ratelimit_headers=DRAFT_03,
        rate_limited_as_resource_exhausted=grpc,
        rate_limit_service=rls_config_pb2.RateLimitServiceConfig(
            grpc_service=grpc_service_pb2.GrpcService(
                envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=names.ratelimit_cluster())
            ),
            transport_api_version=config_source_pb2.V3,
        ),
        rate_limits=[route_components_pb2.RateLimit(actions=actions)],
    )
    f.timeout.FromTimedelta(conf.timeout)
    if conf.failure_mode == "closed":
        # the limiter is unavailable, not the caller over its limit: 503, not 429
        f.status_on_error.CopyFrom(http_status_pb2.HttpStatus(code=http_status_pb2.ServiceUnavailable))
    return f


def global_shapes(mesh: MeshSnapshot) -> dict[str, d.Shape]:
    """Per policy name, the descriptors :func:`global_http_filter` makes this mesh's sidecars
    send (what the rate-limit service accepts)."""
    out: dict[str, d.Shape] = {}
    for policy in mesh.of_kind(KIND.kind):
        spec = spec_as(policy, RateLimitSpec)
        glob = spec.conf.global_
        if glob is None:
            continue
        named = {sel.match.get("service", ANY) for sel in spec.sources}
        out[policy.name] = d.Shape(
            policy=policy.name,
            destinations=destination_services(policy),
            sources=frozenset(d.ANY_CALLER if s == ANY else s for s in named),
            limit=global_limit(glob).encode(),
            per_header=glob.per_header,
            per_path=glob.per_path,
        )
    return out


def local_tcp_filter(rate: ConnectionRate, port: int) -> tcp_local_pb2.LocalRateLimit:
    seconds = rate.interval.total_seconds()
    return tcp_local_pb2.LocalRateLimit(
        stat_prefix=names.ratelimit_stat_prefix(port), token_bucket=_bucket(rate.connections, seconds)
    )


def _configure(section: InboundSection, rule: CallerRule[RateLimitSpec], mesh: MeshSnapshot) -> bool:
    assert section.inbound is not None
    local, glob = rule.spec.conf.local, rule.spec.conf.global_
    port, grpc = section.inbound.port, section.inbound.protocol == "grpc"
    configured = False
    if section.http is not None:
        if local is not None and local.http is not None:
            f = local_http_filter(rule, local.http, mesh, port, grpc)
            section.http.add_filter(ORDER_LOCAL, "envoy.filters.http.local_ratelimit", f)
            configured = True
        if glob is not None:
            g = global_http_filter(rule, glob, mesh, section.inbound.service, grpc)
            section.http.add_filter(ORDER_GLOBAL, "envoy.filters.http.ratelimit", g)
            configured = True
    elif section.tcp is not None and rule.service is None and local is not None and local.tcp is not None:
        section.network_filters.append(
            (
                ORDER_RATELIMIT,
                envoy.network_filter(
                    "envoy.filters.network.local_ratelimit", local_tcp_filter(local.tcp, port)
                ),
            )
        )
        configured = True
    return configured


def inbound(section: InboundSection, resolved: Resolved[RateLimitSpec], mesh: MeshSnapshot) -> None:
    if section.inbound is None:
        return
    for rule in caller_rules(resolved, section.inbound.tags, mesh):
        if _configure(section, rule, mesh):
            section.note(KIND.kind, rule.policy.name, rule.match.reason())


POLICY = PolicyKind(
    info=KIND,
    spec=RateLimitSpec,
    merge=Merge.PER_CALLER,
    shapes=frozenset({"http-filter", "network-filter"}),
    inbound=inbound,
    # Its filter slot (ORDER_RATELIMIT) already runs after RBAC; this keeps inspect's list in that order.
    after=("TrafficPermission",),
    mesh_checks=(ONE_PER_CALLER,),
    explains=frozenset({"rate-limit"}),
    on_gateway=True,  # a limit on the gateway's service caps what enters through it
)
