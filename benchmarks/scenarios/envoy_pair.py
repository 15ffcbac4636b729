"""(c) Two hand-written Envoys doing mTLS: the floor for any Envoy-based mesh.

    client --HTTP/1.1--> envoy A (outbound) --mTLS--> envoy B (inbound) --HTTP/1.1--> nginx

Static bootstrap files, no xDS: this measures Envoy itself, with nothing a control plane
adds. Each Envoy runs ``--concurrency 1`` (one worker thread), as a sidecar typically is
sized, and ``--disable-hot-restart`` so that several can share a host. Certificates are
ECDSA P-256 leaves with only a SPIFFE URI SAN; each side checks the other's SAN. Both
sides are pinned to TLS 1.3 (Envoy's client default stops at 1.2), like the HAProxy pair.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks import tools
from benchmarks.certs import BenchCA, CertFiles
from benchmarks.procs import ProcessGroup, free_port, wait_http_ok
from benchmarks.scenarios.base import Scenario, ScenarioEnv, Target

_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3"


def _tls_context(certs: CertFiles, peer_spiffe_id: str) -> str:
    """common_tls_context body (indented for its place below): own cert, CA, peer SAN match."""
    return f"""common_tls_context:
          tls_params: {{tls_minimum_protocol_version: TLSv1_3, tls_maximum_protocol_version: TLSv1_3}}
          tls_certificates:
          - certificate_chain: {{filename: "{certs.cert}"}}
            private_key: {{filename: "{certs.key}"}}
          validation_context:
            trusted_ca: {{filename: "{certs.ca}"}}
            match_typed_subject_alt_names:
            - san_type: URI
              matcher: {{exact: "{peer_spiffe_id}"}}"""


def _listener(name: str, port: int, cluster: str, transport_socket: str = "") -> str:
    return f"""  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {_HCM}
          stat_prefix: {name}
          codec_type: HTTP1
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: {cluster}}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": {_ROUTER}}}
{transport_socket}"""


def _cluster(name: str, port: int, transport_socket: str = "") -> str:
    return f"""  - name: {name}
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}
{transport_socket}"""


def _bootstrap(admin_socket: Path, listener: str, cluster: str) -> str:
    # admin on a 0600 Unix socket, as Meshline's sidecars have it (a TCP admin is open to every local user)
    return f"""admin:
  address: {{pipe: {{path: "{admin_socket}", mode: 384}}}}
static_resources:
  listeners:
{listener}  clusters:
{cluster}"""


def outbound_bootstrap(port: int, admin_socket: Path, peer_port: int, certs: CertFiles, peer_id: str) -> str:
    """Envoy A: plain HTTP in, mTLS out to the peer sidecar."""
    upstream_tls = f"""    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": {_TLS}.UpstreamTlsContext
        {_tls_context(certs, peer_id)}
"""
    return _bootstrap(
        admin_socket,
        _listener("outbound", port, "peer_sidecar"),
        _cluster("peer_sidecar", peer_port, upstream_tls),
    )


def inbound_bootstrap(port: int, admin_socket: Path, app_port: int, certs: CertFiles, peer_id: str) -> str:
    """Envoy B: mTLS in (client certificate required), plain HTTP to the local app."""
    downstream_tls = f"""      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": {_TLS}.DownstreamTlsContext
          require_client_certificate: true
          {_tls_context(certs, peer_id).replace(chr(10), chr(10) + "  ")}
"""
    return _bootstrap(
        admin_socket,
        _listener("inbound", port, "local_app", downstream_tls),
        _cluster("local_app", app_port),
    )


def spawn_envoy(procs: ProcessGroup, name: str, config: Path) -> int:
    """Start one Envoy (1 worker, no hot restart) and return its PID."""
    envoy = tools.require("envoy")
    proc = procs.spawn(
        name,
        [envoy, "-c", str(config), "--concurrency", "1", "--disable-hot-restart", "-l", "warning"],
    )
    return proc.pid


def start(env: ScenarioEnv) -> Target:
    ca = BenchCA(env.workdir / "certs")
    client, server = ca.issue("client"), ca.issue("server")
    port_a, port_b = free_port(), free_port()
    config_b = env.workdir / "envoy-b.yaml"
    config_b.write_text(inbound_bootstrap(port_b, env.workdir / "envoy-b.admin.sock", env.upstream.port, server, client.spiffe_id))
    config_a = env.workdir / "envoy-a.yaml"
    config_a.write_text(outbound_bootstrap(port_a, env.workdir / "envoy-a.admin.sock", port_b, client, server.spiffe_id))
    pid_b = spawn_envoy(env.procs, "envoy-b", config_b)
    pid_a = spawn_envoy(env.procs, "envoy-a", config_a)
    wait_http_ok("127.0.0.1", port_a, env.upstream.path, timeout=30, group=env.procs)
    return Target(
        url=f"http://127.0.0.1:{port_a}{env.upstream.path}",
        proxies={"envoy-a": pid_a, "envoy-b": pid_b},
    )


SCENARIO = Scenario(
    key="envoy",
    label="(c) envoy pair",
    description="client -> Envoy -> mTLS -> Envoy -> nginx (static bootstrap, --concurrency 1)",
    start=start,
    requires=("envoy",),
)
