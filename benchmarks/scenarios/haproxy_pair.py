"""(d) Two hand-configured HAProxies doing the same mTLS hop as the Envoy pair.

    client --HTTP/1.1--> haproxy A --mTLS--> haproxy B --HTTP/1.1--> nginx

One thread each (``nbthread 1``, the counterpart of Envoy's ``--concurrency 1``), single
process (no master-worker), TLS 1.3 only with TLS_AES_128_GCM_SHA256 first (what
BoringSSL picks for the Envoy pair). Both sides require and verify the peer's certificate
against the bench CA. Difference from the Envoy pair: HAProxy 2.6 cannot match a URI SAN
(``verifyhost`` looks at DNS SANs/CN only), so the SPIFFE ID is not checked. That is a
handshake-time check, and with keep-alive connections handshakes are not on the
measured path.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks import tools
from benchmarks.certs import BenchCA, CertFiles
from benchmarks.procs import ProcessGroup, free_port, wait_http_ok
from benchmarks.scenarios.base import Scenario, ScenarioEnv, Target

_GLOBAL_AND_DEFAULTS = """global
    nbthread 1
    maxconn 4096
    ssl-default-bind-options ssl-min-ver TLSv1.3
    ssl-default-server-options ssl-min-ver TLSv1.3
    ssl-default-bind-ciphersuites TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256
    ssl-default-server-ciphersuites TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 2s
    timeout client 120s
    timeout server 120s
    timeout http-keep-alive 120s
"""


def outbound_config(port: int, peer_port: int, certs: CertFiles) -> str:
    """HAProxy A: plain HTTP in, mTLS (client certificate, CA-verified server) out."""
    return f"""{_GLOBAL_AND_DEFAULTS}
frontend outbound
    bind 127.0.0.1:{port}
    default_backend peer_sidecar

backend peer_sidecar
    server b 127.0.0.1:{peer_port} ssl crt {certs.combined} ca-file {certs.ca} verify required
"""


def inbound_config(port: int, app_port: int, certs: CertFiles) -> str:
    """HAProxy B: mTLS in (client certificate required), plain HTTP to the local app."""
    return f"""{_GLOBAL_AND_DEFAULTS}
frontend inbound
    bind 127.0.0.1:{port} ssl crt {certs.combined} ca-file {certs.ca} verify required
    default_backend local_app

backend local_app
    server app 127.0.0.1:{app_port}
"""


def spawn_haproxy(procs: ProcessGroup, name: str, config: Path) -> int:
    haproxy = tools.require("haproxy")
    return procs.spawn(name, [haproxy, "-db", "-f", str(config)]).pid


def start(env: ScenarioEnv) -> Target:
    ca = BenchCA(env.workdir / "certs")
    client, server = ca.issue("client"), ca.issue("server")
    port_a, port_b = free_port(), free_port()
    config_b = env.workdir / "haproxy-b.cfg"
    config_b.write_text(inbound_config(port_b, env.upstream.port, server))
    config_a = env.workdir / "haproxy-a.cfg"
    config_a.write_text(outbound_config(port_a, port_b, client))
    pid_b = spawn_haproxy(env.procs, "haproxy-b", config_b)
    pid_a = spawn_haproxy(env.procs, "haproxy-a", config_a)
    wait_http_ok("127.0.0.1", port_a, env.upstream.path, timeout=15, group=env.procs)
    return Target(
        url=f"http://127.0.0.1:{port_a}{env.upstream.path}",
        proxies={"haproxy-a": pid_a, "haproxy-b": pid_b},
    )


SCENARIO = Scenario(
    key="haproxy",
    label="(d) haproxy pair",
    description="client -> HAProxy -> mTLS -> HAProxy -> nginx (nbthread 1)",
    start=start,
    requires=("haproxy",),
)
