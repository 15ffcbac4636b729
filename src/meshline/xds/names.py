"""Every Envoy resource name Meshline generates is built here.

Names end up in Envoy stats and therefore in users' dashboards and alerts:
renaming one is a breaking change. Names never contain '.', which Envoy's stat
tag extraction treats as a separator.
"""

from __future__ import annotations

from collections.abc import Mapping

# Static clusters in the bootstrap the agent writes. XDS_CLUSTER is the agent's xDS proxy: a
# gRPC service Envoy calls through it must be listed in meshline.agent.xds_proxy.FORWARDED.
XDS_CLUSTER = "meshline_xds"
SDS_CLUSTER = "meshline_sds"
# Secrets the agent serves over SDS on its local socket.
IDENTITY_SECRET = "identity_cert"
TRUST_BUNDLE_SECRET = "mesh_trust_bundle"
# The OpenTelemetry (OTLP/gRPC) collector of a mesh's tracing settings, in every sidecar.
TRACING_CLUSTER = "meshline_tracing"


def access_log_name(listener: str) -> str:
    """The log name a listener's access-log stream identifies itself with to the control plane."""
    return f"meshline_{listener}"


def node_id(mesh: str, dataplane: str) -> str:
    return f"{mesh}.{dataplane}"


def parse_node_id(node: str) -> tuple[str, str]:
    mesh, sep, name = node.partition(".")
    if not sep or not mesh or not name:
        raise ValueError(f"node id '{node}' is not <mesh>.<dataplane>")
    return mesh, name


def inbound_listener(port: int) -> str:
    return f"inbound_{port}"


def inbound_cluster(port: int) -> str:
    """The local app behind inbound port ``port``."""
    return f"localhost_{port}"


def inbound_route(port: int) -> str:
    return f"inbound_{port}"


def outbound_listener(port: int) -> str:
    return f"outbound_{port}"


def outbound_route(port: int) -> str:
    return f"outbound_{port}"


# Transparent mode (render/transparent.py): the two capture listeners, the cluster that
# sends a connection on to where it was going, and one outbound section per service.
TRANSPARENT_OUTBOUND_LISTENER = "outbound_transparent"
TRANSPARENT_INBOUND_LISTENER = "inbound_transparent"
PASSTHROUGH_CLUSTER = "passthrough"
# Connections the mesh's passthrough mode refuses (render/passthrough.py): one chain of the
# transparent listener, its stats under tcp.outbound_blocked.*, its cluster without endpoints.
BLOCKED_LISTENER = "outbound_blocked"
BLOCKED_CLUSTER = "blocked"
BLOCKED_DESTINATION = "(blocked)"  # the destination its access-log entries name (stat's edge)
_BLOCKED_SECTION = "blocked-"


def blocked_section(mode: str) -> str:
    """The name part of the blocked chain's section id: ``blocked-declared``."""
    return _BLOCKED_SECTION + mode


def blocked_mode(section: str) -> str | None:
    """The passthrough mode of a blocked chain's section id string (None: not one)."""
    last = section.rsplit("/", 1)[-1]
    return last[len(_BLOCKED_SECTION):] if last.startswith(_BLOCKED_SECTION) and "/" in section else None


def transparent_outbound(service: str, variant: str = "") -> str:
    """The outbound section of ``service`` in the transparent listener (listener stats, RDS):
    ``outbound_orders``, and ``outbound_orders_http`` for a detected protocol."""
    return f"outbound_{service}" + (f"_{variant}" if variant else "")


def detected_variant(name: str, variant: str) -> str:
    """A cluster of a service whose protocol is detected, for one detected protocol."""
    return f"{name}_{variant}" if variant else name


def service_cluster(service: str, subset: Mapping[str, str] | None = None) -> str:
    """``orders`` for the whole service; ``orders_version-v2`` for a tag subset."""
    if not subset:
        return service
    parts = "_".join(f"{k}-{v}".replace(".", "-").replace("/", "-") for k, v in sorted(subset.items()))
    return f"{service}_{parts}"


def cluster_service(cluster: str) -> str:
    """The service of a :func:`service_cluster` name (service names hold no '_')."""
    return cluster.split("_", 1)[0]


# A gateway's cluster names the mesh service it reaches in its metadata: the per-request stats
# and the access logs of a gateway listener take their destination from it (a route decides).
CLUSTER_SERVICE_META = ("meshline", "service")
CLUSTER_SERVICE_FORMAT = "%CLUSTER_METADATA(meshline:service)%"


def gateway_listener(port: int) -> str:
    return f"gateway_{port}"


GATEWAY_CERT_PREFIX = "gateway_cert_"


def gateway_certificate_secret(certificate: str) -> str:
    """A gateway listener's certificate, served by the gateway's agent over SDS (from its
    --certs-dir, ``<certificate>/tls.crt`` and ``tls.key``)."""
    return GATEWAY_CERT_PREFIX + certificate


def gateway_chain(listener: str, hostname: str = "") -> str:
    """One filter chain of a gateway listener (a Gateway listener section, maybe one SNI of it)."""
    return f"{listener}_{hostname.replace('*', 'wildcard')}" if hostname else listener


def passthrough_listener(proxy: str, port: int) -> str:
    """The SNI listener of a zone ingress or egress (``zone-ingress`` -> ``zone_ingress_10001``)."""
    return f"{proxy.replace('-', '_')}_{port}"


def passthrough_cluster(service: str) -> str:
    """A zone proxy's cluster for one service: TCP to its instances, TLS left to the two sidecars."""
    return f"sni_{service}"


def egress_gateway_listener(port: int) -> str:
    """The egress gateway's one listener: mTLS from sidecars, a chain per ExternalService by SNI."""
    return f"egress_{port}"


def egress_sni(external_service: str, mesh: str) -> str:
    """What a sidecar sends as SNI to the egress gateway for ExternalService ``external_service``."""
    return f"{external_service}.{mesh}.external"


def stat_prefix(name: str) -> str:
    return name.replace(".", "_")


def route_rule(policy: str, rule: int, match: int) -> str:
    """One Envoy route of an HTTPRoute: rule ``rule`` (0-based), request match ``match`` of that rule."""
    return f"{policy}_rule{rule}_match{match}"


def ratelimit_cluster() -> str:
    """The cluster sidecars reach the global rate-limit service through.

    The service runs on the control plane's gRPC server next to ADS, so this is the
    bootstrap's ADS cluster: the agent's xDS proxy, which reaches the control plane with the
    same address, TLS and token as for ADS.
    """
    return XDS_CLUSTER


RATELIMIT_DOMAIN_PREFIX = "meshline_"


def ratelimit_domain(mesh: str) -> str:
    """The rate-limit service domain: counters of different meshes never mix."""
    return RATELIMIT_DOMAIN_PREFIX + mesh


def ratelimit_domain_mesh(domain: str) -> str | None:
    """The mesh of a rate-limit domain (None: not one :func:`ratelimit_domain` makes)."""
    mesh = domain.removeprefix(RATELIMIT_DOMAIN_PREFIX)
    return mesh if mesh and mesh != domain else None


def ratelimit_stat_prefix(port: int) -> str:
    """Stat prefix of the rate-limit filters on inbound ``port`` (``<prefix>.http_local_rate_limit.*``)."""
    return f"inbound_{port}_ratelimit"


# TrafficPermission: the RBAC policy that refuses what no permission allows in a deny-by-default
# mesh ('_' cannot occur in resource names, so it never collides with a TrafficPermission).
DEFAULT_PERMISSION_POLICY = "mesh_default"


def permission_policy(name: str) -> str:
    """The Envoy RBAC policy of TrafficPermission ``name``: in 403 bodies and ``rbac.policy.<name>.*`` stats."""
    return name


def inbound_rbac_stat_prefix(port: int) -> str:
    """Stat prefix of the L4 (TCP) RBAC filter on inbound ``port``: ``inbound_<port>.rbac.denied``."""
    return f"inbound_{port}."


# Response header the inbound adds to the mesh's own denials (a TrafficPermission's 403),
# naming the deciding policy: both sidecars' access logs and stats see it, so a denial is
# counted apart from an app's own 403.
DENIED_HEADER = "x-meshline-denied"
