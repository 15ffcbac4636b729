"""ExternalServices in rendering: the cluster that reaches one, with TLS origination.

An ExternalService is a destination service like a mesh service: its outbound section is
the ordinary one (``render/outbound.py``), named after it, so HTTPRoute, Timeout, Retry and
CircuitBreaker select it by ``service: <name>`` and shape it unchanged. Only its cluster
differs: instead of EDS and mesh mTLS to a service identity,

* a host name: ``STRICT_DNS`` (Envoy resolves it with the host's resolver; its own queries
  are never captured);
* an IP address: ``STATIC``;
* a CIDR: ``ORIGINAL_DST`` (the app dialled an address in it; transparent workloads only);

and, with ``tls``, an upstream TLS context that sends the server name as SNI and verifies
the server's chain against the CA bundle and its DNS SANs (no client certificate: the mesh
identity is not shown outside the mesh).

When the Mesh names an egress gateway (``spec.egress.gateway``), a sidecar's cluster for a
host or address goes to the gateway's instances instead, over mesh mTLS with SNI
``<name>.<mesh>.external``; the gateway (``render/egress_gateway.py``) has the cluster above
and is the only proxy that talks to the outside. A CIDR is dialled by address, so it stays
direct (the gateway would not know which address of it the app meant).
"""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from envoy.type.matcher.v3 import string_pb2

from meshline.core.dataplane import DataplaneSpec
from meshline.core.external_service import ExternalServiceSpec
from meshline.render import envoy
from meshline.render.defaults import DEFAULTS
from meshline.render.mesh_snapshot import Endpoint, MeshSnapshot
from meshline.xds import names

KIND = "ExternalService"


def external_services(mesh: MeshSnapshot) -> dict[str, ExternalServiceSpec]:
    """name -> spec, for the mesh's ExternalServices (none when passthrough is ``none``)."""
    if mesh.spec.transparent_proxy.passthrough == "none":
        return {}
    return {r.name: r.spec for r in mesh.of_kind(KIND) if isinstance(r.spec, ExternalServiceSpec)}


def declared(mesh: MeshSnapshot) -> dict[str, ExternalServiceSpec]:
    """Every ExternalService of the mesh, whatever its passthrough mode."""
    return {r.name: r.spec for r in mesh.of_kind(KIND) if isinstance(r.spec, ExternalServiceSpec)}


def resolve(mesh: MeshSnapshot, service: str) -> str | None:
    """The ExternalService an outbound names: by its name, or by its host (``--upstream
    api.example.test=15010``); None when it is not one."""
    found = declared(mesh)
    if service in found:
        return service
    host = service.rstrip(".").lower()
    for name, spec in sorted(found.items()):
        if spec.host == host:
            return name
    return None


def _validation(spec: ExternalServiceSpec) -> common_pb2.CertificateValidationContext:
    assert spec.tls is not None
    ctx = common_pb2.CertificateValidationContext()
    if spec.tls.ca.pem is not None:
        ctx.trusted_ca.inline_string = spec.tls.ca.pem
    else:
        assert spec.tls.ca.file is not None
        ctx.trusted_ca.filename = spec.tls.ca.file
    for name in spec.tls.subject_alt_names or [spec.server_name]:
        ctx.match_typed_subject_alt_names.append(common_pb2.SubjectAltNameMatcher(
            san_type=common_pb2.SubjectAltNameMatcher.DNS, matcher=string_pb2.StringMatcher(exact=name)))  # fmt: skip
    return ctx


def originate_tls(spec: ExternalServiceSpec) -> base_pb2.TransportSocket:
    """The sidecar's TLS to the outside: SNI, the server verified by CA and SAN."""
    ctx = tls_pb2.UpstreamTlsContext(
        sni=spec.server_name,
        common_tls_context=tls_pb2.CommonTlsContext(
            # Envoy's client default stops at TLS 1.2; the outside gets the best both ends speak
            tls_params=common_pb2.TlsParameters(tls_minimum_protocol_version=common_pb2.TlsParameters.TLSv1_2,
                                                tls_maximum_protocol_version=common_pb2.TlsParameters.TLSv1_3),
            validation_context=_validation(spec),
            alpn_protocols=["http/1.1"] if spec.protocol == "http" else [],
        ),
    )
    return base_pb2.TransportSocket(name="envoy.transport_sockets.tls", typed_config=envoy.packed(ctx))


def blackhole_cluster(name: str, protocol: str) -> cluster_pb2.Cluster:
    """A cluster with no endpoint: every request gets 503 no healthy upstream, every connection is closed."""
    c = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.STATIC)
    c.load_assignment.cluster_name = name
    c.connect_timeout.FromTimedelta(DEFAULTS.connect)
    envoy.set_protocol_options(c, protocol)
    return c


def gateway_instances(mesh: MeshSnapshot) -> list[Endpoint]:
    """The mesh's egress gateway instances (``spec.egress.gateway``), where sidecars send
    ExternalService traffic; empty when the mesh names none."""
    gateway = mesh.spec.egress.gateway
    if gateway is None:
        return []
    out = []
    for name, dp in sorted(mesh.dataplanes.items()):
        spec = dp.spec
        if not isinstance(spec, DataplaneSpec) or spec.proxy != "egress-gateway" or spec.services() != [gateway]:
            continue
        inbound = spec.inbound[0]
        out.append(Endpoint(name, spec.address, inbound.port, inbound.tags, spec.ready and name not in mesh.offline))
    return out


def via_gateway(mesh: MeshSnapshot, name: str, spec: ExternalServiceSpec) -> tuple[cluster_pb2.Cluster, ClusterLoadAssignment]:
    """A sidecar's cluster for an ExternalService behind the egress gateway: mTLS to the
    gateway's identity, the ExternalService named in the SNI (the gateway picks its chain by it)."""
    assert mesh.spec.egress.gateway is not None
    transport = envoy.upstream_mtls(mesh.identity(mesh.spec.egress.gateway), names.egress_sni(name, mesh.name),
                                    spec.mesh_protocol)  # fmt: skip
    cluster = envoy.eds_cluster(name, spec.mesh_protocol, transport)
    return cluster, envoy.load_assignment(name, gateway_instances(mesh))


def external_cluster(mesh: MeshSnapshot, name: str, spec: ExternalServiceSpec, explicit: bool = False,
                     gateway: bool = True) -> tuple[cluster_pb2.Cluster, ClusterLoadAssignment | None]:  # fmt: skip
    """The cluster of ExternalService ``name`` (and its endpoints, for EDS). ``explicit``: for an
    outbound port, where a CIDR has no one address to go to (it answers as a service without
    instances). ``gateway``: through the mesh's egress gateway when it names one (False: the
    gateway's own cluster, to the outside)."""
    protocol = spec.mesh_protocol
    if name not in external_services(mesh) or (spec.is_cidr and explicit):
        return blackhole_cluster(name, protocol), None
    if gateway and mesh.spec.egress.gateway is not None and not spec.is_cidr:
        return via_gateway(mesh, name, spec)
    if spec.is_cidr:
        c = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.ORIGINAL_DST,
                                lb_policy=cluster_pb2.Cluster.CLUSTER_PROVIDED)  # fmt: skip
        c.connect_timeout.FromTimedelta(DEFAULTS.connect)
        envoy.set_protocol_options(c, protocol)
    else:
        c = envoy.static_cluster(name, spec.host or spec.address or "", spec.port, protocol)
        if spec.host is not None:
            c.type = cluster_pb2.Cluster.STRICT_DNS
            c.dns_lookup_family = cluster_pb2.Cluster.V4_PREFERRED
    if spec.tls is not None:
        c.transport_socket.CopyFrom(originate_tls(spec))
    return c, None
