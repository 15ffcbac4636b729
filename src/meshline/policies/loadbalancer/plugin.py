"""LoadBalancer configurer: the algorithm on every cluster, hash policies on every route
(or the TCP proxy), and zone priorities on every endpoint assignment of the outbound."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.type.v3 import hash_policy_pb2

from meshline.policies.common.sections import clusters, proto_duration, route_actions
from meshline.policies.loadbalancer.api import KIND, HashPolicy, LoadBalancerConf, LoadBalancerSpec
from meshline.policies.loadbalancer.locality import caller_zone, prioritize
from meshline.render.mesh_snapshot import MeshSnapshot
from meshline.render.policy_kind import Merge, PolicyKind, Resolved, record
from meshline.render.sections import OutboundSection

Cluster = cluster_pb2.Cluster
LB_POLICIES = {
    "RoundRobin": Cluster.ROUND_ROBIN,
    "LeastRequest": Cluster.LEAST_REQUEST,
    "Random": Cluster.RANDOM,
    "RingHash": Cluster.RING_HASH,
    "Maglev": Cluster.MAGLEV,
}
HASH_FUNCTIONS = {"XXHash": Cluster.RingHashLbConfig.XX_HASH, "MurmurHash2": Cluster.RingHashLbConfig.MURMUR_HASH_2}


def _set_algorithm(cluster: cluster_pb2.Cluster, conf: LoadBalancerConf) -> None:
    cluster.lb_policy = LB_POLICIES[conf.type]
    for field in ("least_request_lb_config", "ring_hash_lb_config", "maglev_lb_config"):
        cluster.ClearField(field)
    if conf.type == "LeastRequest" and conf.least_request:
        cluster.least_request_lb_config.choice_count.value = conf.least_request.choice_count
    elif conf.type == "RingHash" and conf.ring_hash:
        ring = cluster.ring_hash_lb_config
        ring.minimum_ring_size.value = conf.ring_hash.min_ring_size
        ring.maximum_ring_size.value = conf.ring_hash.max_ring_size
        ring.hash_function = HASH_FUNCTIONS[conf.ring_hash.hash_function]
    elif conf.type == "Maglev" and conf.maglev:
        cluster.maglev_lb_config.table_size.value = conf.maglev.table_size
    if conf.panic_threshold is not None:
        cluster.common_lb_config.healthy_panic_threshold.value = conf.panic_threshold


def route_hash_policy(policy: HashPolicy) -> route_components_pb2.RouteAction.HashPolicy:
    out = route_components_pb2.RouteAction.HashPolicy(terminal=policy.terminal)
    if policy.header:
        out.header.header_name = policy.header
    elif policy.cookie:
        out.cookie.name = policy.cookie.name
        if policy.cookie.ttl is not None:
            out.cookie.ttl.CopyFrom(proto_duration(policy.cookie.ttl))
        if policy.cookie.path:
            out.cookie.path = policy.cookie.path
    elif policy.query_parameter:
        out.query_parameter.name = policy.query_parameter
    else:
        out.connection_properties.source_ip = True
    return out


def _set_hashing(section: OutboundSection, policies: list[HashPolicy]) -> str:
    if section.http is not None:
        for action in route_actions(section):
            del action.hash_policy[:]
            action.hash_policy.extend(route_hash_policy(p) for p in policies)
        return ""
    if section.tcp is not None:
        del section.tcp.hash_policy[:]
        if any(not p.l7 for p in policies):
            section.tcp.hash_policy.append(hash_policy_pb2.HashPolicy(source_ip=hash_policy_pb2.HashPolicy.SourceIp()))
        if any(p.l7 for p in policies):
            return "header, cookie and query hashes ignored: the service speaks tcp (only sourceIP applies)"
    return ""


def _set_locality(section: OutboundSection, conf: LoadBalancerConf) -> str:
    awareness = conf.locality_awareness
    if awareness.disabled:
        return "locality awareness off"
    zone = caller_zone(section.source_tags)
    if zone is None:
        return "no locality preference: the caller has no single zone tag"
    for cla in section.endpoints.values():
        prioritize(cla, zone, awareness.failover_order, awareness.overprovisioning_factor)
    return f"prefers zone {zone}"


def configure(section: OutboundSection, resolved: Resolved[LoadBalancerSpec], mesh: MeshSnapshot) -> None:
    matched = resolved.best
    conf = matched.spec.conf
    for cluster in clusters(section):
        _set_algorithm(cluster, conf)
    notes = [_set_hashing(section, conf.hash_policies), _set_locality(section, conf)]
    record(section, matched, "; ".join(n for n in notes if n))


POLICY = PolicyKind(
    info=KIND,
    spec=LoadBalancerSpec,
    merge=Merge.MOST_SPECIFIC,
    shapes=frozenset({"route", "cluster", "endpoints"}),
    outbound=configure,
    # After routing: hashes go on every route and subset cluster it made.
    after=("HTTPRoute", "TCPRoute"),
)
