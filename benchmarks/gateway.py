"""The ingress gateway against a hand-written Envoy front proxy doing the same TLS termination.

Four test hosts (network namespaces, ``meshline.testing.netns``): the control plane on ``cp``, an
nginx origin behind a Meshline sidecar on ``srv``, on ``gw`` both front proxies, and wrk on
``cli``. Path ``gateway``: wrk -> ``meshline gateway`` (HTTPS listener from a Gateway API
``Gateway``, an HTTPRoute to the service) -> the sidecar -> nginx. Path ``handwritten``: wrk ->
an Envoy started from a static bootstrap written here (one HTTPS listener, one route, one
static cluster) -> the same sidecar -> nginx. Same certificate, same Envoy binary and
``--concurrency 1``, same hop behind them. The mesh runs with mTLS disabled so that both
front proxies send the same plaintext hop to the sidecar: the comparison isolates what the
gateway's generated configuration costs against the minimal one (with mTLS on, the
hand-written proxy would need a mesh certificate and the comparison would measure that).

Rounds are interleaved (gateway, handwritten, gateway, ...); each figure is the median over
rounds and each ratio the median of the rounds' own ratios (gateway / handwritten), so what
the machine's other work does to both largely cancels. wrk's closed-loop latency at 16 and 1
keep-alive connections; TLS handshakes happen once per connection.
"""

from __future__ import annotations

import statistics
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

from benchmarks import tools
from benchmarks.loadgen import wrk
from benchmarks.procs import ProcessGroup

Progress = Callable[[str], None]
NGINX_CONF = """
daemon off; master_process off; worker_processes 1; error_log {dir}/error.log; pid {dir}/nginx.pid;
events {{ worker_connections 1024; }}
http {{ access_log off; client_body_temp_path {dir}; proxy_temp_path {dir}; fastcgi_temp_path {dir};
        uwsgi_temp_path {dir}; scgi_temp_path {dir};
        server {{ listen 0.0.0.0:8080; location / {{ return 200 "ok\\n"; }} }} }}
"""
METRICS = ("rps", "c1_p50_ms", "c16_p50_ms", "c16_p90_ms", "c16_p99_ms")
GATEWAY_PORT, HANDWRITTEN_PORT = 8443, 9443

GATEWAY_DOCS = """
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge}
spec:
  listeners:
    - {name: https, port: 8443, protocol: HTTPS, tls: {certificateRefs: [{name: bench}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bench}
spec:
  parentRefs: [{name: edge, sectionName: https}]
  rules: [{backendRefs: [{name: bench, port: 8080}]}]
"""


def handwritten_bootstrap(address: str, port: int, cert: Path, key: Path, upstream: str, upstream_port: int,
                          admin: Path) -> str:  # fmt: skip
    """The minimal front proxy an operator would write by hand for the same job."""
    return textwrap.dedent(f"""
        admin: {{address: {{pipe: {{path: {admin}}}}}}}
        static_resources:
          listeners:
            - name: front
              address: {{socket_address: {{address: {address}, port_value: {port}}}}}
              filter_chains:
                - transport_socket:
                    name: envoy.transport_sockets.tls
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
                      common_tls_context:
                        alpn_protocols: [h2, http/1.1]
                        tls_certificates: [{{certificate_chain: {{filename: {cert}}}, private_key: {{filename: {key}}}}}]
                  filters:
                    - name: envoy.filters.network.http_connection_manager
                      typed_config:
                        "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                        stat_prefix: front
                        route_config:
                          virtual_hosts: [{{name: all, domains: ["*"], routes: [{{match: {{prefix: /}}, route: {{cluster: origin}}}}]}}]
                        http_filters: [{{name: envoy.filters.http.router, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}]
          clusters:
            - name: origin
              type: STATIC
              connect_timeout: 5s
              load_assignment:
                cluster_name: origin
                endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: {upstream}, port_value: {upstream_port}}}}}}}}}]}}]
    """)


def _rounds(ns: str, urls: dict[str, str], rounds: int, seconds: float,
            progress: Progress) -> dict[str, dict[str, list[float]]]:  # fmt: skip
    samples: dict[str, dict[str, list[float]]] = {m: {k: [] for k in METRICS} for m in urls}
    for r in range(rounds):
        for path, url in urls.items():
            c16 = wrk.run_in_netns(ns, url, seconds, 16)
            c1 = wrk.run_in_netns(ns, url, max(1, int(seconds) // 2), 1)
            if c16.non_2xx or c16.socket_errors:
                raise RuntimeError(f"{path}: {c16.non_2xx} non-2xx, {c16.socket_errors} socket errors")
            s = samples[path]
            s["rps"].append(c16.rps)
            s["c1_p50_ms"].append(c1.latency_ms["p50"])
            for p in ("p50", "p90", "p99"):
                s[f"c16_{p}_ms"].append(c16.latency_ms[p])
            progress(f"  round {r + 1} {path}: {c16.rps:,.0f} req/s, p50 {c16.latency_ms['p50']:.2f} ms (16 conns),"
                     f" {c1.latency_ms['p50']:.2f} ms (1 conn)")  # fmt: skip
    return samples


def run(procs: ProcessGroup, workdir: Path, rounds: int, seconds: float,
        progress: Progress) -> tuple[dict[str, float], dict[str, dict[str, list[float]]]]:  # fmt: skip
    """(figures, every round's samples per path)."""
    from meshline.testing.hostmesh import HostMesh
    from meshline.testing.mesh import wait_until
    from meshline.testing.netns import TestNetwork
    from meshline.testing.tls_certs import TestCA

    nginx = tools.require("nginx")
    envoy = tools.envoy_path() or tools.require("envoy")
    net = TestNetwork(workdir / "net")
    procs.add_cleanup(net.close)
    mesh = HostMesh(net, workdir / "mesh", mtls="disabled").start()
    hosts = {n: net.host(n) for n in ("gw", "srv", "cli")}
    d = workdir / "nginx"
    d.mkdir(parents=True, exist_ok=True)
    (d / "nginx.conf").write_text(NGINX_CONF.format(dir=d))
    mesh.run(hosts["srv"], "bench", 8080, [nginx, "-c", str(d / "nginx.conf"), "-p", str(d)], protocol="http",
             transparent=False)  # fmt: skip
    certs = workdir / "certs"
    TestCA.make("bench CA").issue_to(certs / "bench", ["bench.example.test"])
    mesh.apply(GATEWAY_DOCS)
    gw = hosts["gw"]
    args = [sys.executable, "-m", "meshline", "gateway", "--name", "edge", "--dataplane-name", "edge-gw", "--port",
            str(GATEWAY_PORT), "--api", mesh.api_url, "--ca-file", str(mesh.ca_file), "--token-file",
            str(mesh.token("edge")), "--work-dir", str(workdir / "edge"), "--certs-dir", str(certs),
            "--drain-seconds", "0", "--metrics-port", "0"]  # fmt: skip
    env = {k: v for k, v in mesh.env().items() if k not in ("MESHLINE_TOKEN_FILE", "MESHLINE_API")}
    mesh.agents["edge-gw"] = gw.spawn("gateway", args, env=env)
    mesh.wait_serving(mesh.agents["edge-gw"], "edge-gw")
    inbound = next(d["spec"]["inbound"][0]["port"] for d in mesh.get("dataplanes") if d["name"].startswith("bench-"))
    boot = workdir / "front.yaml"
    boot.write_text(handwritten_bootstrap(gw.address, HANDWRITTEN_PORT, certs / "bench" / "tls.crt",
                                          certs / "bench" / "tls.key", hosts["srv"].address, inbound,
                                          workdir / "front-admin.sock"))  # fmt: skip
    front = gw.spawn("handwritten-envoy", [envoy, "-c", str(boot), "--concurrency", "1", "--disable-hot-restart",
                                           "--log-level", "warn"])  # fmt: skip
    urls = {"gateway": f"https://{gw.address}:{GATEWAY_PORT}/", "handwritten": f"https://{gw.address}:{HANDWRITTEN_PORT}/"}
    for url in urls.values():
        wait_until(lambda url=url: hosts["cli"].curl(url, "-k")[0] == 200, 60, interval=0.2, what=f"{url}")  # type: ignore[misc]
    assert front.alive(), front.log()
    progress("both front proxies answer; warming up")
    for url in urls.values():
        wrk.run_in_netns(hosts["cli"].ns, url, 1, 4)
    figures: dict[str, float] = {"rounds": float(rounds), "seconds": seconds}
    all_samples: dict[str, dict[str, list[float]]] = {}
    # Phase 1: the mesh's defaults (every request's access log streamed to the control plane,
    # per-request stats). Phase 2: log streaming off (Mesh spec.logging.stream: false).
    for phase, prefix in (("defaults", ""), ("no log streaming", "nostream.")):
        if prefix:
            mesh.apply('{"kind": "Mesh", "name": "default", "spec": {"mtls": {"mode": "disabled"},'
                       ' "logging": {"stream": false}}}', wait=True)  # fmt: skip
            wrk.run_in_netns(hosts["cli"].ns, urls["gateway"], 1, 4)
        progress(f"phase: {phase}")
        samples = _rounds(hosts["cli"].ns, urls, rounds, seconds, progress)
        all_samples.update({prefix + k: v for k, v in samples.items()})
        for path, sm in samples.items():
            for k, values in sm.items():
                figures[f"{prefix}{path}.{k}"] = statistics.median(values)
        for k in METRICS:
            pairs = [g / h for g, h in zip(samples["gateway"][k], samples["handwritten"][k], strict=True) if h]
            figures[f"{prefix}ratio.{k}"] = statistics.median(pairs)
            figures[f"{prefix}ratio_spread.{k}"] = max(pairs) - min(pairs)
    mesh.stop()
    return figures, all_samples
