"""FaultInjection on the destination's inbound: one Envoy fault filter per (caller rule, fault).

Why the destination and not the caller's outbound: a fault filter answers before the
router, so on the caller's side Envoy's own retries and route timeout would never see
the injected abort or delay. Injected at the destination, the fault travels back like
a real failure: the caller's Retry/Timeout policies and its latency show it.
"""

from __future__ import annotations

from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.type.matcher.v3 import string_pb2
from envoy.type.v3 import percent_pb2

from meshline.policies.common.callers import ONE_PER_CALLER, CallerRule, caller_rules
from meshline.policies.faultinjection.api import KIND, Fault, FaultInjectionSpec
from meshline.render.mesh_snapshot import MeshSnapshot
from meshline.render.policy_kind import Merge, PolicyKind, Resolved
from meshline.render.sections import ORDER_FAULT, InboundSection

FILTER = "envoy.filters.http.fault"


def _percent(value: float) -> percent_pb2.FractionalPercent:
    # per million, so fractional percentages (0.5%) are exact
    return percent_pb2.FractionalPercent(
        numerator=round(value * 10_000), denominator=percent_pb2.FractionalPercent.MILLION
    )


def _header_matchers(fault: Fault) -> list[route_components_pb2.HeaderMatcher]:
    out = []
    for name, value in sorted(fault.match.headers.items()):
        if value == "*":
            out.append(route_components_pb2.HeaderMatcher(name=name, present_match=True))
        else:
            out.append(
                route_components_pb2.HeaderMatcher(
                    name=name, string_match=string_pb2.StringMatcher(exact=value)
                )
            )
    return out


def fault_filter(fault: Fault, caller: route_components_pb2.HeaderMatcher | None) -> fault_pb2.HTTPFault:
    f = fault_pb2.HTTPFault()
    if caller is not None:
        f.headers.append(caller)
    f.headers.extend(_header_matchers(fault))
    if fault.delay is not None:
        f.delay.percentage.CopyFrom(_percent(fault.delay.percentage))
        f.delay.fixed_delay.FromTimedelta(fault.delay.value)
    if fault.abort is not None:
        f.abort.percentage.CopyFrom(_percent(fault.abort.percentage))
        if fault.abort.http_status is not None:
            f.abort.http_status = fault.abort.http_status
        else:
            assert fault.abort.grpc_status is not None
            f.abort.grpc_status = fault.abort.grpc_status
    return f


def _configure(section: InboundSection, rule: CallerRule[FaultInjectionSpec], mesh: MeshSnapshot) -> None:
    assert section.http is not None
    caller = rule.identity_matcher(mesh)
    for fault in rule.spec.conf.faults:
        section.http.add_filter(ORDER_FAULT, FILTER, fault_filter(fault, caller))
    section.note(KIND.kind, rule.policy.name, rule.match.reason())


def inbound(section: InboundSection, resolved: Resolved[FaultInjectionSpec], mesh: MeshSnapshot) -> None:
    if section.http is None or section.inbound is None:
        return
    for rule in caller_rules(resolved, section.inbound.tags, mesh):
        _configure(section, rule, mesh)


POLICY = PolicyKind(
    info=KIND,
    spec=FaultInjectionSpec,
    merge=Merge.PER_CALLER,
    shapes=frozenset({"http-filter"}),
    inbound=inbound,
    # Its filter slot (ORDER_FAULT) already runs after both; this keeps inspect's list in that order.
    after=("TrafficPermission", "RateLimit"),
    mesh_checks=(ONE_PER_CALLER,),
    explains=frozenset({"fault"}),
    on_gateway=True,  # faults on the gateway's service: what enters through it (chaos at the edge)
)
