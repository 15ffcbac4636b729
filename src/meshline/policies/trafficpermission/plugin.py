"""TrafficPermission configurer: one RBAC filter on each inbound, checked by the callee's sidecar.

HTTP inbounds get ``envoy.filters.http.rbac`` first in the HCM (``ORDER_AUTHZ``) and a local
reply mapper per denying policy, so a refused request gets 403 with a body naming the policy.
TCP inbounds get ``envoy.filters.network.rbac`` before ``tcp_proxy``: a refused connection is
closed. Nothing is added where nothing can be denied (mesh default allow, no deny policy).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import base_pb2, substitution_format_string_pb2
from envoy.extensions.access_loggers.filters.cel.v3 import cel_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac_pb2

from meshline.core.dataplane import Inbound
from meshline.policies.trafficpermission.api import KIND, TrafficPermissionSpec
from meshline.policies.trafficpermission.decision import DENY, Clause, clauses_for, for_tcp, precedence
from meshline.policies.trafficpermission.rbac import Compiled, compile_clauses
from meshline.render import envoy
from meshline.render.mesh_snapshot import MeshSnapshot
from meshline.render.policy_kind import Matched, Merge, PolicyKind, Resolved
from meshline.render.sections import ORDER_AUTHZ, InboundSection
from meshline.xds import names

HTTP_RBAC = "envoy.filters.http.rbac"
NETWORK_RBAC = "envoy.filters.network.rbac"
CEL_FILTER = "envoy.access_loggers.extension_filters.cel"


@dataclass(frozen=True)
class Plan:
    """Everything one inbound (by tags and L4/L7) gets; shared by every instance of a service."""

    compiled: Compiled
    reasons: tuple[tuple[str, str], ...]  # (policy name, why and how it applies)
    default: str
    checks_paths: bool  # some policy here matches on request paths


def _reason(matched: Matched[TrafficPermissionSpec], clauses: list[Clause], l7: bool, fail_closed: bool) -> str:
    spec = matched.spec
    text = f"{matched.reason()}: {spec.action}"
    if spec.rules:
        text += f" {len(spec.rules)} HTTP rule(s)"
    if spec.dry_run:
        text += " (dry-run: recorded in rbac.shadow_denied, not enforced)"
    if spec.rules and not l7:
        text += (
            "; TCP inbound: the whole connection is refused (HTTP rules cannot be checked)"
            if spec.action == DENY
            else "; ignored: HTTP rules cannot match a TCP connection"
        )
    if fail_closed and any(c.unauthenticated and c.services is not None for c in clauses):
        text += "; also refuses callers without a mesh certificate (their identity is unknown)"
    return text


def plan_for(resolved: Resolved[TrafficPermissionSpec], l7: bool, mesh: MeshSnapshot) -> Plan:
    """``resolved``: the policies whose destinations select the inbound (in name order)."""
    fail_closed = mesh.spec.mtls.mode != "strict"
    clauses: list[Clause] = []
    reasons = []
    for matched in resolved.matches:
        mine = clauses_for(matched.policy, matched.match.destination, fail_closed)
        reasons.append((matched.policy.name, _reason(matched, mine, l7, fail_closed)))
        clauses.extend(mine if l7 else for_tcp(mine))
    decides = precedence(clauses)
    reasons = [(name, "; ".join([text, *decides.get(name, [])])) for name, text in reasons]
    default = mesh.spec.effective_default_permission()
    compiled = compile_clauses(clauses, default == DENY, mesh.identity)
    checks_paths = any(rule.paths for c in clauses for rule in c.rules)
    return Plan(compiled, tuple(reasons), default, checks_paths)


def _mapper(policy: str, body: str) -> hcm_pb2.ResponseMapper:
    details = f"rbac_access_denied_matched_policy[{policy}]"
    m = hcm_pb2.ResponseMapper(
        filter=accesslog_pb2.AccessLogFilter(
            extension_filter=accesslog_pb2.ExtensionFilter(
                name=CEL_FILTER,
                typed_config=envoy.packed(
                    cel_pb2.ExpressionFilter(expression=f"response.code_details == '{details}'")
                ),
            )
        )
    )
    m.headers_to_add.append(base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=names.DENIED_HEADER, value=policy),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
    ))  # fmt: skip
    m.body_format_override.CopyFrom(
        substitution_format_string_pb2.SubstitutionFormatString(
            text_format_source=base_pb2.DataSource(inline_string=body), content_type="text/plain"
        )
    )
    return m


def denial_body(policy: str, mesh: str) -> str:
    if policy == names.DEFAULT_PERMISSION_POLICY:
        return (
            f"RBAC: access denied: no TrafficPermission allows this request"
            f" and the default permission of mesh {mesh} is deny\n"
        )
    return f"RBAC: access denied by TrafficPermission {policy}\n"


def _configure_http(section: InboundSection, plan: Plan, mesh: MeshSnapshot) -> None:
    assert section.http is not None
    c = plan.compiled
    cfg = http_rbac_pb2.RBAC(track_per_rule_stats=True)
    if c.rules is not None:
        cfg.rules.CopyFrom(c.rules)
    if c.shadow is not None:
        cfg.shadow_rules.CopyFrom(c.shadow)
    section.http.add_filter(ORDER_AUTHZ, HTTP_RBAC, cfg)
    if plan.checks_paths:
        # `/admin%2Fusers` must not slip past a `/admin/` rule when the app decodes %2F: this
        # sidecar is the last hop, so decode here and let RBAC and the app see the same path.
        section.http.hcm.path_with_escaped_slashes_action = hcm_pb2.HttpConnectionManager.UNESCAPE_AND_FORWARD
    for policy in c.denying:
        section.http.hcm.local_reply_config.mappers.append(_mapper(policy, denial_body(policy, mesh.name)))


def _configure_tcp(section: InboundSection, inbound: Inbound, plan: Plan) -> None:
    c = plan.compiled
    cfg = network_rbac_pb2.RBAC(stat_prefix=names.inbound_rbac_stat_prefix(inbound.port))
    if c.rules is not None:
        cfg.rules.CopyFrom(c.rules)
    if c.shadow is not None:
        cfg.shadow_rules.CopyFrom(c.shadow)
    section.network_filters.append((ORDER_AUTHZ, envoy.network_filter(NETWORK_RBAC, cfg)))


def configure_inbound(section: InboundSection, resolved: Resolved[TrafficPermissionSpec], mesh: MeshSnapshot) -> None:
    inbound = section.inbound
    if inbound is None or (not mesh.of_kind(KIND.kind) and mesh.spec.effective_default_permission() != DENY):
        return
    l7 = section.http is not None
    # The plan depends only on the tags (they decide the resolution): shared by every instance.
    key = ("trafficpermission", json.dumps(inbound.tags, sort_keys=True), l7)
    plan = mesh.memoize(key, lambda: plan_for(resolved, l7, mesh))
    for name, reason in plan.reasons:
        section.note(KIND.kind, name, reason)
    if plan.compiled.rules is None and plan.compiled.shadow is None:
        return
    if plan.default == DENY:
        section.note("Mesh", mesh.name, "default permission deny: what no TrafficPermission allows is refused")
    if l7:
        _configure_http(section, plan, mesh)
    else:
        _configure_tcp(section, inbound, plan)


POLICY = PolicyKind(
    info=KIND,
    spec=TrafficPermissionSpec,
    merge=Merge.PER_CALLER,
    shapes=frozenset({"http-filter", "network-filter"}),
    inbound=configure_inbound,
    runs_unmatched=True,  # a mesh whose default permission is deny refuses what nothing allows
    on_egress=True,  # who may call an ExternalService, checked where its traffic leaves: the egress gateway
    explains=frozenset({"permission"}),
)
