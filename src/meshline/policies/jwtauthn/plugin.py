"""JWTAuthentication -> Envoy's jwt_authn HTTP filter on the destination's inbound listener
(and a gateway's entry listeners), before authorization: a request without a valid token is
answered 401 and never reaches RBAC, a rate limit or the app."""

from __future__ import annotations

import ipaddress
from datetime import timedelta
from urllib.parse import urlsplit

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2, http_uri_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.access_loggers.filters.cel.v3 import cel_pb2
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2

from meshline.policies.common.fields import JWT_FILTER, JWT_PAYLOAD_KEY
from meshline.policies.common.sections import proto_duration
from meshline.policies.jwtauthn.api import KIND, JWTAuthenticationSpec, JWTConf
from meshline.render import envoy
from meshline.render.mesh_snapshot import MeshSnapshot
from meshline.render.policy_kind import Merge, PolicyKind, Resolved, record
from meshline.render.sections import ORDER_AUTHN, InboundSection

FILTER = JWT_FILTER
CEL_FILTER = "envoy.access_loggers.extension_filters.cel"
PROVIDER = "meshline"
FETCH_TIMEOUT_S = 5


def jwks_cluster_name(policy: str, port: int) -> str:
    """One per listener: each section's clusters carry that section's own metadata (its policies)."""
    return f"jwks_{policy}_{port}"


def jwks_cluster(name: str, uri: str, ca: str | None) -> cluster_pb2.Cluster:
    """The issuer's JWKS server, reached by DNS over TLS (verified: the system's CAs or ``ca``)."""
    parts = urlsplit(uri)
    host, port = parts.hostname or "", parts.port or 443
    try:  # an address in the URI: the server's certificate must name that address, and no SNI
        ipaddress.ip_address(host)
        is_ip = True
    except ValueError:
        is_ip = False
    c = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.STRICT_DNS,
                            load_assignment=endpoint_pb2.ClusterLoadAssignment(cluster_name=name, endpoints=[
                                endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=[
                                    endpoint_components_pb2.LbEndpoint(endpoint=endpoint_components_pb2.Endpoint(
                                        address=envoy.socket_address(host, port)))])]))  # fmt: skip
    c.connect_timeout.FromSeconds(FETCH_TIMEOUT_S)
    trusted = base_pb2.DataSource(inline_string=ca) if ca else base_pb2.DataSource(filename="/etc/ssl/certs/ca-certificates.crt")
    san = common_pb2.SubjectAltNameMatcher.IP_ADDRESS if is_ip else common_pb2.SubjectAltNameMatcher.DNS
    ctx = tls_pb2.UpstreamTlsContext(sni="" if is_ip else host, common_tls_context=tls_pb2.CommonTlsContext(
        validation_context=common_pb2.CertificateValidationContext(trusted_ca=trusted, match_typed_subject_alt_names=[
            common_pb2.SubjectAltNameMatcher(san_type=san, matcher={"exact": host})])))  # fmt: skip
    c.transport_socket.CopyFrom(base_pb2.TransportSocket(name="envoy.transport_sockets.tls", typed_config=envoy.packed(ctx)))
    return c


def provider(conf: JWTConf, cluster: str) -> jwt.JwtProvider:
    # The verified claims in dynamic metadata: what TrafficPermission rules on claims read.
    p = jwt.JwtProvider(issuer=conf.issuer, audiences=conf.audiences, forward=conf.forward_token,
                        payload_in_metadata=JWT_PAYLOAD_KEY)
    p.claim_to_headers.extend(jwt.JwtClaimToHeader(header_name=c.header, claim_name=c.claim) for c in conf.claim_to_headers)
    src = conf.jwks
    if src.inline is not None:
        p.local_jwks.inline_string = src.inline
    elif src.file is not None:
        p.local_jwks.filename = src.file
    else:
        assert src.uri is not None
        timeout = proto_duration(timedelta(seconds=FETCH_TIMEOUT_S))
        p.remote_jwks.http_uri.CopyFrom(http_uri_pb2.HttpUri(uri=src.uri, cluster=cluster, timeout=timeout))
        if src.cache_duration is not None:
            p.remote_jwks.cache_duration.CopyFrom(proto_duration(src.cache_duration))
        # Fetched in the background and kept: a slow or failing issuer does not stall requests.
        p.remote_jwks.async_fetch.SetInParent()
    return p


def unauthorized_mapper() -> hcm_pb2.ResponseMapper:
    """Every token failure is 401 (Envoy answers a token of another audience 403): the request
    is not authenticated, whatever was wrong with its token; the body keeps Envoy's reason."""
    m = hcm_pb2.ResponseMapper(filter=accesslog_pb2.AccessLogFilter(extension_filter=accesslog_pb2.ExtensionFilter(
        name=CEL_FILTER,
        typed_config=envoy.packed(cel_pb2.ExpressionFilter(
            expression="response.code_details.startsWith('jwt_authn_access_denied')")),
    )))  # fmt: skip
    m.status_code.value = 401
    return m


def configure(section: InboundSection, resolved: Resolved[JWTAuthenticationSpec], mesh: MeshSnapshot) -> None:
    if section.http is None:
        return  # a TCP service carries no tokens
    best = resolved.best
    conf = best.spec.conf
    cluster = jwks_cluster_name(best.policy.name, section.section_id.port)
    cfg = jwt.JwtAuthentication(
        providers={PROVIDER: provider(conf, cluster)},
        rules=[jwt.RequirementRule(match=route_components_pb2.RouteMatch(prefix="/"),
                                   requires=jwt.JwtRequirement(provider_name=PROVIDER))],  # fmt: skip
    )
    section.http.add_filter(ORDER_AUTHN, FILTER, cfg)
    section.http.hcm.local_reply_config.mappers.append(unauthorized_mapper())
    if conf.jwks.uri is not None:
        section.clusters[cluster] = jwks_cluster(cluster, conf.jwks.uri, conf.jwks.ca)
    record(section, best, f"issuer {conf.issuer}" + (f", audiences {', '.join(conf.audiences)}" if conf.audiences else ""))


POLICY = PolicyKind(
    info=KIND,
    spec=JWTAuthenticationSpec,
    merge=Merge.MOST_SPECIFIC,
    shapes=frozenset({"http-filter", "cluster"}),
    inbound=configure,
    explains=frozenset({"authentication"}),
    on_gateway=True,  # on a gateway's service: tokens are checked where requests enter the mesh
)
