"""The ingress gateway across real hosts: an outside client with no mesh certificate reaches
mesh services through `meshline gateway` over HTTPS (two hostnames, two certificates chosen by
SNI), plain HTTP is redirected, and the gateway calls into a strict, default-deny mesh with its
own identity (mTLS), so TrafficPermissions decide.

One mesh for the module (run it with ``-n 0`` or ``--dist loadfile``): the control plane on
``cp``, the gateway ``edge`` on ``gw``, ``web`` and ``api`` on ``w`` (explicit-mode sidecars),
and ``out``, an outside host with nothing of Meshline (curl and the test CA only).
"""

from __future__ import annotations

import contextlib
import json
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from meshline.testing.hostmesh import HostMesh
from meshline.testing.jwt import TestIssuer
from meshline.testing.mesh import wait_until
from meshline.testing.netns import Host, HostProcess, TestNetwork, require_netns
from meshline.testing.tls_certs import TestCA

APPS = [sys.executable, "-m", "meshline.testing.apps"]
HTTP_PORT, HTTPS_PORT = 8080, 8443

# Gateway API documents applied as they are.
GATEWAY = """
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: default}
spec:
  gatewayClassName: meshline
  listeners:
    - {name: http, port: 8080, protocol: HTTP}
    - name: web
      port: 8443
      protocol: HTTPS
      hostname: web.example.test
      tls: {certificateRefs: [{name: web-example}]}
    - name: api
      port: 8443
      protocol: HTTPS
      hostname: "*.api.test"
      tls: {certificateRefs: [{name: api-wildcard}]}
    - {name: secure, port: 8443, protocol: TLS, hostname: secure.example.test, tls: {mode: Passthrough}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: to-https, namespace: default}
spec:
  parentRefs: [{name: edge, sectionName: http}]
  rules:
    - filters: [{type: RequestRedirect, requestRedirect: {scheme: https, port: 8443, statusCode: 301}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: default}
spec:
  parentRefs: [{name: edge, sectionName: web}]
  rules:
    - matches: [{path: {type: PathPrefix, value: /api}}]
      filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /v1}}}]
      backendRefs: [{name: api, port: 9001}]
    - backendRefs: [{name: web, port: 9000}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: api, namespace: default}
spec:
  parentRefs: [{name: edge, sectionName: api}]
  hostnames: [eu.api.test]
  rules:
    - filters: [{type: CORS, cors: {allowOrigins: ["https://*.example.test"], allowMethods: [GET, POST],
                                    allowHeaders: [authorization], maxAge: 600}}]
      backendRefs: [{name: api, port: 9001}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: greeter, namespace: default}
spec:
  parentRefs: [{name: edge, sectionName: api}]
  hostnames: [grpc.api.test]
  rules:
    - matches: [{method: {service: meshline.test.Echo}}]
      backendRefs: [{name: greeter, port: 9003}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TLSRoute
metadata: {name: secure, namespace: default}
spec:
  parentRefs: [{name: edge, sectionName: secure}]
  hostnames: [secure.example.test]
  rules: [{backendRefs: [{name: secure, port: 9002}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: flaky, namespace: default}
spec:
  parentRefs: [{name: edge, sectionName: api}]
  hostnames: [flaky.api.test]
  rules: [{backendRefs: [{name: flaky, port: 9004}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: slow, namespace: default}
spec:
  parentRefs: [{name: edge, sectionName: api}]
  hostnames: [slow.api.test]
  rules: [{backendRefs: [{name: slow, port: 9005}]}]
---
kind: TrafficPermission
mesh: default
name: edge-in
spec:
  sources: [{match: {service: edge}}]
  destinations: [{match: {service: '*'}}]
  action: allow
"""
PERMIT = GATEWAY.split("---")[-1]


@dataclass
class Edge:
    net: TestNetwork
    mesh: HostMesh
    gateway: HostProcess
    ca_file: Path
    certs: Path
    ca: TestCA

    def host(self, name: str) -> Host:
        return self.net.hosts[name]

    @contextlib.contextmanager
    def extra_https_listener(self, name: str, domain: str, certificate: str, wait: bool = True) -> Iterator[
            Callable[[], tuple[int, str]]]:  # fmt: skip
        """A listener ``name`` on port 9443 for ``*.<domain>`` with ``certificate``, routed to api,
        while in the block; yields a curl of ``https://eu.<domain>:9443/`` from the outside host."""
        docs = GATEWAY.replace(
            "    - {name: secure, port: 8443,",
            f"    - {{name: {name}, port: 9443, protocol: HTTPS, hostname: '*.{domain}',"
            f" tls: {{certificateRefs: [{{name: {certificate}}}]}}}}\n    - {{name: secure, port: 8443,")  # fmt: skip
        assert docs != GATEWAY
        docs += textwrap.dedent(f"""
            ---
            apiVersion: gateway.networking.k8s.io/v1
            kind: HTTPRoute
            metadata: {{name: {name}, namespace: default}}
            spec:
              parentRefs: [{{name: edge, sectionName: {name}}}]
              rules: [{{backendRefs: [{{name: api, port: 9001}}]}}]
        """)
        self.mesh.apply(docs, wait=wait)
        gw = self.host("gw").address
        try:
            yield lambda: self.host("out").curl(f"https://eu.{domain}:9443/", "--resolve", f"eu.{domain}:9443:{gw}",
                                                "--cacert", str(self.ca_file))  # fmt: skip
        finally:
            self.mesh.cli("delete", "httproute", name, check=False)
            self.mesh.cli("delete", "meshgatewayroute", name, check=False)
            self.mesh.apply(GATEWAY, wait=True)

    def https(self, hostname: str, path: str = "/", *args: str) -> tuple[int, str]:
        """curl from the outside host to the gateway, as ``https://hostname``, verifying the test CA."""
        gw = self.host("gw").address
        return self.host("out").curl(f"https://{hostname}:{HTTPS_PORT}{path}", "--resolve",
                                     f"{hostname}:{HTTPS_PORT}:{gw}", "--cacert", str(self.ca_file), *args)  # fmt: skip

    def served_cert(self, hostname: str) -> str:
        """The PEM certificate the gateway presents for SNI ``hostname``."""
        out = self.served_names(hostname)
        begin, end = out.find("-----BEGIN CERTIFICATE-----"), out.find("-----END CERTIFICATE-----")
        assert begin >= 0 and end > begin, out
        return out[begin:end]

    def served_names(self, hostname: str) -> str:
        """The subject the gateway presents for SNI ``hostname``."""
        gw = self.host("gw").address
        done = self.host("out").run(["openssl", "s_client", "-connect", f"{gw}:{HTTPS_PORT}", "-servername", hostname,
                                     "-CAfile", str(self.ca_file)], input="", timeout=15)  # fmt: skip
        return done.stdout

    def admin(self, path: str) -> str:
        sock = self.mesh.work / "dp" / "edge-gw" / "admin.sock"
        return self.host("gw").run(["curl", "-sS", "--unix-socket", str(sock), f"http://envoy{path}"]).stdout


def _start_gateway(mesh: HostMesh, host: Host, certs: Path) -> HostProcess:
    args = [sys.executable, "-m", "meshline", "gateway", "--name", "edge", "--dataplane-name", "edge-gw",
            "--port", str(HTTP_PORT), "--port", str(HTTPS_PORT), "--api", mesh.api_url, "--ca-file", str(mesh.ca_file),
            "--token-file", str(mesh.token("edge")), "--work-dir", str(mesh.work / "dp" / "edge-gw"),
            "--certs-dir", str(certs), "--drain-seconds", "0"]  # fmt: skip
    env = {k: v for k, v in mesh.env().items() if k not in ("MESHLINE_TOKEN_FILE", "MESHLINE_API")}
    proc = host.spawn("gateway-edge", args, env=env)
    mesh.agents["edge-gw"] = proc
    mesh.wait_serving(proc, "edge-gw")
    return proc


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    require_netns("curl", "openssl")
    work = tmp_path_factory.mktemp("gateway")
    with TestNetwork(work) as net:
        hosts = {n: net.host(n) for n in ("cp", "gw", "w", "out")}
        ca = TestCA.make("gateway test CA")
        ca_file = ca.pem_file(work / "ca.pem")
        certs = work / "certs"
        ca.issue_to(certs / "web-example", ["web.example.test"])
        ca.issue_to(certs / "api-wildcard", ["*.api.test"])
        ca.issue_to(work / "secure", ["secure.example.test"])  # the backend's own certificate: not the gateway's
        mesh = HostMesh(net, work).start()  # strict mTLS: default deny
        http = [*APPS, "http"]
        procs = [
            mesh.run(hosts["w"], "web", 9000, [*http, "--name", "web-w", "--port", "9000"], protocol="http",
                     transparent=False, wait=False),
            mesh.run(hosts["w"], "api", 9001, [*http, "--name", "api-w", "--port", "9001"], protocol="http",
                     transparent=False, wait=False),
            mesh.run(hosts["w"], "greeter", 9003, [*APPS, "grpc", "--name", "greeter-w", "--port", "9003"],
                     protocol="grpc", transparent=False, wait=False),
            mesh.run(hosts["w"], "flaky", 9004, [*http, "--name", "flaky-w", "--port", "9004", "--fail-ratio", "0.5"],
                     protocol="http", transparent=False, wait=False),
            mesh.run(hosts["w"], "slow", 9005, [*http, "--name", "slow-w", "--port", "9005", "--delay", "2"],
                     protocol="http", transparent=False, wait=False),
            # a backend that terminates TLS itself: the gateway passes its connections through by SNI
            mesh.run(hosts["w"], "secure", 9002, ["openssl", "s_server", "-accept", "127.0.0.1:9002", "-www", "-quiet",
                     "-cert", str(work / "secure" / "tls.crt"), "-key", str(work / "secure" / "tls.key")],
                     protocol="tcp", transparent=False, wait=False),
        ]  # fmt: skip
        for proc in procs:
            mesh.wait_serving(proc, proc.name.split(".agent-", 1)[1])
        mesh.apply(GATEWAY, wait=False)
        gateway = _start_gateway(mesh, hosts["gw"], certs)
        world = Edge(net, mesh, gateway, ca_file, certs, ca)
        wait_until(lambda: world.https("eu.api.test")[0] == 200, 30, interval=0.2, what="the gateway to route to api")
        try:
            yield world
        finally:
            mesh.stop()


def test_https_by_sni_two_hostnames_two_certificates_routed_by_host_and_path(edge: Edge) -> None:
    code, body = edge.https("eu.api.test", "/items")
    assert code == 200, body
    seen = json.loads(body)
    assert seen["instance"] == "api-w" and seen["path"] == "/items"
    # the gateway called api over mTLS with its own identity
    assert "URI=spiffe://meshline.local/default/edge" in seen["headers"]["x-forwarded-client-cert"]
    # each hostname is served its own certificate (curl verified the name against the test CA)
    assert "CN = web.example.test" in edge.served_names("web.example.test")
    assert "CN = *.api.test" in edge.served_names("eu.api.test")
    # web.example.test/api/... goes to api with the prefix rewritten
    code, body = edge.https("web.example.test", "/api/items")
    assert code == 200, body
    assert json.loads(body)["instance"] == "api-w" and json.loads(body)["path"] == "/v1/items"
    code, body = edge.https("web.example.test", "/")
    assert code == 200 and json.loads(body)["instance"] == "web-w", body
    # a hostname no listener serves: no certificate for it, the handshake fails
    assert edge.https("other.example.test")[0] == 0


def test_plain_http_is_redirected_to_https(edge: Edge) -> None:
    gw = edge.host("gw").address
    done = edge.host("out").run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}",
                                 "-H", "Host: web.example.test", f"http://{gw}:{HTTP_PORT}/a?b=1"], timeout=15)  # fmt: skip
    assert done.stdout == "301 https://web.example.test:8443/a?b=1", done.stdout + done.stderr


def test_strict_default_deny_refuses_the_gateway_until_a_traffic_permission_allows_it(edge: Edge) -> None:
    edge.mesh.apply(textwrap.dedent("""
        kind: TrafficPermission
        mesh: default
        name: edge-in
        spec:
          sources: [{match: {service: web}}]
          destinations: [{match: {service: api}}]
          action: allow
    """), wait=True)
    try:
        # connections opened under the old permission drain (Envoy finishes them on the old listener)
        wait_until(lambda: edge.https("eu.api.test", "/")[0] == 403, 30, interval=0.2, what="api to refuse the gateway")
        code, body = edge.https("eu.api.test", "/")
        assert code == 403, body
        assert "no TrafficPermission allows this request and the default permission of mesh default is deny" in body
    finally:
        edge.mesh.apply(PERMIT, wait=True)
    wait_until(lambda: edge.https("eu.api.test", "/")[0] == 200, 30, interval=0.2, what="api to take the gateway again")


def test_tls_passthrough_reaches_a_backend_that_terminates_tls_itself(edge: Edge) -> None:
    started = time.time()
    code, body = edge.https("secure.example.test", "/")
    assert code == 200 and "s_server" in body, body  # openssl's status page, over the backend's own TLS
    assert "CN = secure.example.test" in edge.served_names("secure.example.test")
    # the gateway holds no certificate for that name: it never decrypted the connection
    assert "secure" not in edge.admin("/certs").replace("secure.example.test", "")
    # the connection shows in tap at the gateway when it closes: who called, where it went
    at_gateway = wait_until(lambda: next((r for r in edge.mesh.recent("secure") if r["dataplane"] == "edge-gw"
                                          and r["time"] >= started - 1), None), 20, interval=0.3,
                            what="the gateway's entry for the passed-through connection")  # fmt: skip
    assert at_gateway is not None
    assert (at_gateway["protocol"], at_gateway["source"], at_gateway["destination"]) == ("tcp", "edge", "secure")
    assert at_gateway["dataplane"] == "edge-gw" and at_gateway["section"] == "gateway/listener/8443"
    assert at_gateway["client"].startswith(edge.host("out").address + ":"), at_gateway
    assert at_gateway["bytesIn"] > 0 and at_gateway["bytesOut"] > 0 and not at_gateway["failed"], at_gateway


def test_grpc_is_routed_by_grpc_route_over_https(edge: Edge) -> None:
    gw = edge.host("gw").address
    done = edge.host("out").run([*APPS, "client", "grpcs", f"{gw}:{HTTPS_PORT}", "grpc.api.test", str(edge.ca_file),
                                 "--timeout", "10"], timeout=30)  # fmt: skip
    assert json.loads(done.stdout.strip().splitlines()[-1]).get("result") == "greeter-w:ping", done.stdout + done.stderr


def test_replacing_a_certificate_under_https_load_fails_no_request(edge: Edge) -> None:
    before = edge.served_cert("web.example.test")
    out, gw, work = edge.host("out"), edge.host("gw").address, edge.net.work_dir
    count = 300
    loaders = {}
    for mode in ("handshakes", "keepalive"):
        argv = [*APPS, "load", "--url", f"https://web.example.test:{HTTPS_PORT}/", "--connect", gw, "--cafile",
                str(edge.ca_file), "--count", str(count), "--interval", "0.02", "--out", str(work / f"load-{mode}.json")]
        loaders[mode] = out.spawn(f"load-{mode}", [*argv, *(["--keepalive"] if mode == "keepalive" else [])])  # fmt: skip
    for proc in loaders.values():
        wait_until(lambda proc=proc: "done 50" in proc.log() or not proc.alive(), 60, what="the load to run")  # type: ignore[misc]
    edge.ca.issue_to(edge.certs / "web-example", ["web.example.test"])  # a new key and certificate, files replaced
    wait_until(lambda: edge.served_cert("web.example.test") != before, 30, interval=0.2, what="the new certificate")
    for mode in loaders:
        wait_until(lambda mode=mode: (work / f"load-{mode}.json").exists(), 120, what=f"the {mode} load to finish")  # type: ignore[misc]
    results = {mode: json.loads((work / f"load-{mode}.json").read_text()) for mode in loaders}
    for mode, got in results.items():
        assert got["codes"] == {"200": count}, (mode, got)
    # new connections got the new certificate; the kept-alive one kept its own (never dropped)
    assert len(results["handshakes"]["serials"]) == 2, results
    assert len(results["keepalive"]["serials"]) == 1, results


def _codes(edge: Edge, hostname: str, count: int) -> dict[int, int]:
    got: dict[int, int] = {}
    for _ in range(count):
        code = edge.https(hostname, "/")[0]
        got[code] = got.get(code, 0) + 1
    return got


def test_mesh_policies_apply_on_gateway_routes_retry_timeout_and_rate_limit(edge: Edge) -> None:
    edge.mesh.apply(textwrap.dedent("""
        kind: Retry
        mesh: default
        name: edge-retries
        spec:
          sources: [{match: {service: edge}}]
          destinations: [{match: {service: flaky}}]
          conf:
            http: {attempts: 8, retriableStatusCodes: [503], budget: {disabled: true}}
        ---
        kind: Timeout
        mesh: default
        name: edge-timeouts
        spec:
          sources: [{match: {service: edge}}]
          destinations: [{match: {service: slow}}]
          conf:
            http: {requestTimeout: 300ms}
    """), wait=True)
    # flaky answers 503 half the time: the gateway retries (as a sidecar would), every request ends 200
    assert _codes(edge, "flaky.api.test", 20) == {200: 20}
    # slow takes 2 s: the gateway gives up after 300 ms
    code, body = edge.https("slow.api.test", "/")
    assert (code, body) == (504, "upstream request timeout")
    # a fault on the gateway's own service: marked requests are aborted where they enter
    edge.mesh.apply(textwrap.dedent("""
        kind: FaultInjection
        mesh: default
        name: edge-chaos
        spec:
          destinations: [{match: {service: edge}}]
          conf:
            faults: [{match: {headers: {x-chaos: "true"}}, abort: {percentage: 100, httpStatus: 418}}]
    """), wait=True)
    try:
        assert edge.https("eu.api.test", "/", "-H", "x-chaos: true")[0] == 418
        assert edge.https("eu.api.test", "/")[0] == 200
    finally:
        edge.mesh.cli("delete", "faultinjection", "edge-chaos")
    # a local rate limit on the gateway's own service caps what enters through it: 429 past the rate
    edge.mesh.apply(textwrap.dedent("""
        kind: RateLimit
        mesh: default
        name: edge-limit
        spec:
          destinations: [{match: {service: edge}}]
          conf:
            local: {http: {requests: 5, interval: 1m}}
    """), wait=True)
    try:
        got = _codes(edge, "eu.api.test", 8)
        assert got == {200: 5, 429: 3}, got
        code, body = edge.https("eu.api.test", "/", "-i")
        assert code == 429 and "retry-after: 60" in body.lower(), body
    finally:
        edge.mesh.cli("delete", "ratelimit", "edge-limit")
    wait_until(lambda: edge.https("eu.api.test", "/")[0] == 200, 30, interval=0.2, what="the limit to be lifted")


def test_gateway_requests_show_in_tap_at_the_gateway_and_at_the_callee_with_one_request_id(edge: Edge) -> None:
    # A success is streamed only while a tap watches (the mesh samples 1% of the others): the
    # tap names the gateway's service, and the callee's sidecar streams its half too.
    path = f"/tapped-{uuid.uuid4().hex[:8]}"
    with edge.mesh.live_tap("edge", "--path", path, "--max", "1") as tap:
        code, body = edge.https("eu.api.test", path)
        assert code == 200, body
    request_id = json.loads(body)["headers"]["X-Request-ID"]  # made by the gateway, kept by api's sidecar
    [at_gateway] = tap.records
    assert (at_gateway["requestId"], at_gateway["source"], at_gateway["destination"]) == (request_id, "edge", "api")
    assert at_gateway["dataplane"] == "edge-gw" and at_gateway["section"] == "gateway/listener/8443"
    assert at_gateway["client"].startswith(edge.host("out").address + ":")  # the outside caller

    def both_halves() -> list[dict[str, str]] | None:
        records = json.loads(edge.mesh.cli("explain", request_id, "-o", "json", check=False) or "{}").get("records", [])
        return records if len(records) == 2 else None

    halves = wait_until(both_halves, 20, interval=0.2, what="both halves of the request")
    assert {(r["dataplane"], r["direction"], r["requestId"]) for r in halves} == {
        ("edge-gw", "outbound", request_id), ("api-w", "inbound", request_id)}
    assert [r["source"] for r in halves] == ["edge", "edge"]  # api's sidecar saw the gateway's certificate
    stat = edge.mesh.cli("stat", "edge")
    assert "api" in stat, stat  # the edge -> api edge is counted
    found = json.loads(edge.mesh.cli("edges", "-o", "json"))
    assert any(e["source"] == "edge" and e["destination"] == "api" for e in found), found
    # and the gateway's Prometheus endpoint counts it as a call from edge to api
    port = edge.mesh.dataplanes()["edge-gw"]["spec"]["metrics"]["port"]
    gw = edge.host("gw")

    def counted() -> bool:
        text = gw.run(["curl", "-sS", f"http://{gw.address}:{port}/metrics"], timeout=15).stdout
        return any(line.startswith("meshline_requests_total{") and 'reporter="source"' in line
                   and 'source_service="edge"' in line and 'destination_service="api"' in line
                   for line in text.splitlines())  # fmt: skip

    wait_until(counted, 20, interval=0.3, what="edge -> api in the gateway's metrics")


def _jwt_policy(name: str, service: str, jwks: str, **conf: object) -> str:
    return json.dumps({"kind": "JWTAuthentication", "mesh": "default", "name": name, "spec": {
        "destinations": [{"match": {"service": service}}],
        "conf": {"issuer": "https://login.example.test", "jwks": {"inline": jwks}, **conf}}})  # fmt: skip


def test_jwt_on_gateway_routes_and_on_a_sidecar_inbound(edge: Edge) -> None:
    issuer = TestIssuer.make("https://login.example.test")
    other = TestIssuer.make("https://login.example.test", kid="not-published")

    def call(token: str | None) -> tuple[int, str]:
        return edge.https("eu.api.test", "/", "-i", *(["-H", f"Authorization: Bearer {token}"] if token else []))

    edge.mesh.apply(_jwt_policy("users", "edge", issuer.jwks(), audiences=["web"],
                                claimToHeaders=[{"claim": "sub", "header": "x-user"}]), wait=True)  # fmt: skip
    try:
        cases = {
            "no token": (None, "Jwt is missing"),
            "expired": (issuer.token(aud="web", sub="alice", expires_in=-120), "Jwt is expired"),
            "wrong audience": (issuer.token(aud="billing", sub="alice"), "Audiences in Jwt are not allowed"),
            "unknown key": (other.token(aud="web", sub="alice"), "Jwks doesn't have key to match kid or alg from Jwt"),
        }
        for what, (token, reason) in cases.items():
            code, body = call(token)
            assert code == 401, (what, body)
            assert reason in body, (what, body)  # Envoy's reason, in the body and www-authenticate
        # tap explains the refusal in plain words
        path = f"/no-token-{uuid.uuid4().hex[:8]}"
        assert edge.https("eu.api.test", path)[0] == 401
        out = edge.mesh.cli("tap", "edge", "--path", path, "--replay", "5", "--max", "1", "-o", "json")
        explanation = json.loads(out.strip().splitlines()[-1])["explanation"]
        assert explanation.startswith("not authenticated: Jwt is missing; send a valid token"), explanation
        assert "JWTAuthentication users" in explanation or "JWTAuthentication/users" in explanation, explanation
        code, body = call(issuer.token(aud="web", sub="alice"))
        assert code == 200, body
        seen = json.loads(body[body.index("{"):])
        assert seen["headers"]["x-user"] == "alice"  # the claim, forwarded to the app
        assert "Authorization" not in seen["headers"]  # the token itself stays at the gateway
    finally:
        edge.mesh.cli("delete", "jwtauthentication", "users")
    # on a mesh service: its sidecar checks the token the gateway passes on
    edge.mesh.apply(_jwt_policy("api-users", "api", issuer.jwks()), wait=True)
    try:
        wait_until(lambda: call(None)[0] == 401, 30, interval=0.2, what="api's sidecar to require a token")
        code, body = call(None)
        assert "Jwt is missing" in body, body
        code, body = call(issuer.token(aud="api", sub="bob"))
        assert code == 200, body
    finally:
        edge.mesh.cli("delete", "jwtauthentication", "api-users")
    wait_until(lambda: call(None)[0] == 200, 30, interval=0.2, what="api without the token requirement")


def test_a_traffic_permission_on_jwt_claims(edge: Edge) -> None:
    """api's sidecar checks the token (JWTAuthentication on api) and a TrafficPermission lets the
    gateway's requests through only for tokens with role admin or group ops (claims from the
    verified token, not from a header a caller could set)."""
    issuer = TestIssuer.make("https://login.example.test")
    only_some = PERMIT.replace("destinations: [{match: {service: '*'}}]",
                               "destinations: [{match: {service: web}}, {match: {service: greeter}}]")  # fmt: skip
    assert only_some != PERMIT
    edge.mesh.apply("\n---\n".join([only_some, _jwt_policy("api-users", "api", issuer.jwks()), textwrap.dedent("""
        kind: TrafficPermission
        mesh: default
        name: api-admins
        spec:
          sources: [{match: {service: edge}}]
          destinations: [{match: {service: api}}]
          action: allow
          rules:
            - claims: [{name: role, value: admin}]
            - claims: [{name: groups, value: ops}]
    """)]), wait=True)  # fmt: skip

    def call(**claims: object) -> int:
        token = issuer.token(**claims)
        return edge.https("eu.api.test", "/", "-H", f"Authorization: Bearer {token}")[0]

    try:
        wait_until(lambda: call(role="user") == 403, 30, interval=0.2, what="a user token to be refused")
        assert call(role="admin") == 200
        assert call(role="user", groups=["dev", "ops"]) == 200  # a list claim holding the value
        assert call(role="user", groups=["dev"]) == 403
        # a header named like the claim changes nothing: claims come from the verified token
        token = issuer.token(role="user")
        assert edge.https("eu.api.test", "/", "-H", f"Authorization: Bearer {token}", "-H", "role: admin")[0] == 403
    finally:
        edge.mesh.cli("delete", "trafficpermission", "api-admins")
        edge.mesh.cli("delete", "jwtauthentication", "api-users")
        edge.mesh.apply(PERMIT, wait=True)
    wait_until(lambda: edge.https("eu.api.test", "/")[0] == 200, 30, interval=0.2, what="api open to the gateway again")


def _certificate_doc(name: str, chain: bytes, key: bytes) -> str:
    return json.dumps({"kind": "GatewayCertificate", "mesh": "default", "name": name,
                       "spec": {"certificate": chain.decode(), "privateKey": key.decode()}})  # fmt: skip


def test_a_stored_certificate_is_sealed_checked_at_apply_and_served(edge: Edge) -> None:
    import datetime

    chain, key = edge.ca.issue(["*.stored.test"])
    _, other_key = edge.ca.issue(["*.stored.test"])
    old_chain, old_key = edge.ca.issue(["*.stored.test"], valid=datetime.timedelta(minutes=1),
                                       not_before=datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1))  # fmt: skip
    # refused at apply: a key of another certificate, an expired certificate
    def refused(doc: str) -> str:
        done = edge.host("cp").run([sys.executable, "-m", "meshline", "apply", "-f", "-"], env=edge.mesh.env(),
                                   input=doc, timeout=60)  # fmt: skip
        assert done.returncode != 0, done.stdout
        return done.stdout + done.stderr

    found = refused(_certificate_doc("stored", chain, other_key))
    assert "spec.privateKey: the private key is not the key of the certificate" in found, found
    found = refused(_certificate_doc("stored", old_chain, old_key))
    assert "spec.certificate: the certificate expired on" in found, found
    assert "stored" not in edge.mesh.cli("get", "gatewaycertificates")
    edge.mesh.apply(_certificate_doc("stored", chain, key))
    # kept sealed: an admin reads the sealed text back, another token not even that
    stored = edge.mesh.get("gatewaycertificates", "stored")
    assert stored["spec"]["privateKey"].startswith("kek1:") and "PRIVATE KEY" not in json.dumps(stored)
    env = {**edge.mesh.env(), "MESHLINE_TOKEN_FILE": str(edge.mesh.token("web"))}
    as_web = edge.host("cp").run([sys.executable, "-m", "meshline", "get", "gatewaycertificates", "stored", "-o", "json"],
                                 env=env, timeout=60)  # fmt: skip
    assert as_web.returncode == 0, as_web.stderr
    assert json.loads(as_web.stdout)["spec"]["privateKey"] == "(redacted: only admin tokens can read it)"
    # a listener naming it: the gateway fetches it (no file in its certs dir) and serves it by SNI
    with edge.extra_https_listener("stored", "stored.test", "stored") as served:
        wait_until(lambda: served()[0] == 200, 30, interval=0.3, what="the stored certificate to be served")
        assert json.loads(served()[1])["instance"] == "api-w"


def test_a_certificate_nobody_provides_is_named_until_its_files_appear(edge: Edge) -> None:
    """Envoy waits for a missing listener certificate without a word: the gateway's agent says
    which, and how to provide it; once the files are there the listener serves."""
    with edge.extra_https_listener("late", "late.test", "late-cert", wait=False) as served:
        wait_until(lambda: "gateway certificate late-cert is named by a listener but nothing provides it: put"
                           " late-cert/tls.crt and tls.key in --certs-dir, or apply a GatewayCertificate named"
                           " late-cert" in edge.gateway.log(), 30, interval=0.3,
                   what="the gateway to name the missing certificate")  # fmt: skip
        assert served()[0] != 200
        edge.ca.issue_to(edge.certs / "late-cert", ["*.late.test"])
        wait_until(lambda: served()[0] == 200, 30, interval=0.3, what="the listener to serve once the files exist")


def test_a_listener_that_validates_client_certificates(edge: Edge) -> None:
    """Mutual TLS with the outside: only clients with a certificate from the listener's CA get in,
    and the app gets the verified subject (a header the caller cannot set itself)."""
    clients = TestCA.make("partner CA")
    chain, key = clients.issue(["partner.example.test"])
    work = edge.net.work_dir
    (work / "partner.crt").write_bytes(chain)
    (work / "partner.key").write_bytes(key)
    stranger_chain, stranger_key = TestCA.make("someone else").issue(["partner.example.test"])
    (work / "stranger.crt").write_bytes(stranger_chain)
    (work / "stranger.key").write_bytes(stranger_key)
    ca_option = json.dumps(clients.pem.decode())
    with_mtls = GATEWAY.replace(
        "    - {name: secure, port: 8443,",
        "    - {name: partners, port: 9444, protocol: HTTPS, hostname: partners.example.test,"
        " tls: {certificateRefs: [{name: web-example}], options: {meshline.io/client-ca: " + ca_option + "}}}\n"
        "    - {name: secure, port: 8443,")  # fmt: skip
    # the listener's own certificate: web-example, now also naming partners.example.test
    edge.ca.issue_to(edge.certs / "web-example", ["web.example.test", "partners.example.test"])
    route = textwrap.dedent("""
        ---
        apiVersion: gateway.networking.k8s.io/v1
        kind: HTTPRoute
        metadata: {name: partners, namespace: default}
        spec:
          parentRefs: [{name: edge, sectionName: partners}]
          rules: [{backendRefs: [{name: api, port: 9001}]}]
    """)
    edge.mesh.apply(with_mtls + route, wait=True)
    gw = edge.host("gw").address

    def call(*args: str) -> tuple[int, str]:
        return edge.host("out").curl("https://partners.example.test:9444/", "--resolve",
                                     f"partners.example.test:9444:{gw}", "--cacert", str(edge.ca_file), *args)  # fmt: skip

    try:
        cert = ["--cert", str(work / "partner.crt"), "--key", str(work / "partner.key")]
        wait_until(lambda: call(*cert)[0] == 200, 30, interval=0.3, what="the partners listener")
        seen = json.loads(call(*cert, "-H", "x-client-subject: CN=forged")[1])
        assert seen["headers"]["x-client-subject"] == "CN=partner.example.test", seen["headers"]
        assert call()[0] == 0  # no client certificate: the handshake fails
        assert call("--cert", str(work / "stranger.crt"), "--key", str(work / "stranger.key"))[0] == 0
    finally:
        edge.mesh.cli("delete", "meshgatewayroute", "partners", check=False)
        edge.mesh.apply(GATEWAY, wait=True)


def test_cors_preflights_answered_for_allowed_origins_only(edge: Edge) -> None:
    preflight = ["-X", "OPTIONS", "-i", "-H", "Access-Control-Request-Method: POST"]
    code, body = edge.https("eu.api.test", "/items", *preflight, "-H", "Origin: https://app.example.test")
    assert code == 200, body
    head = body.lower()
    assert "access-control-allow-origin: https://app.example.test" in head, body
    assert "access-control-allow-methods: get,post" in head and "access-control-max-age: 600" in head, body
    code, body = edge.https("eu.api.test", "/items", "-i", "-H", "Origin: https://evil.test")
    assert code == 200 and "access-control-allow-origin" not in body.lower(), body  # served, but not shared


JWKS_SERVER = """
import http.server, ssl, sys
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[2], sys.argv[3])
httpd = http.server.HTTPServer(("0.0.0.0", int(sys.argv[1])), http.server.SimpleHTTPRequestHandler)
httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
print("serving JWKS", flush=True)
httpd.serve_forever()
"""


def test_jwks_from_a_file_and_from_an_https_url(edge: Edge) -> None:
    issuer = TestIssuer.make("https://login.example.test")
    work = edge.net.work_dir / "jwks"
    work.mkdir(exist_ok=True)
    (work / "jwks.json").write_text(issuer.jwks())
    w = edge.host("w")
    chain, key = edge.ca.issue(["login.example.test"], ips=(w.address,))
    (work / "server.crt").write_bytes(chain)
    (work / "server.key").write_bytes(key)
    (work / "server.py").write_text(JWKS_SERVER)
    server = w.spawn("jwks", [sys.executable, str(work / "server.py"), "9600", str(work / "server.crt"),
                              str(work / "server.key")], cwd=work)  # fmt: skip
    wait_until(lambda: "serving JWKS" in server.log() or not server.alive(), 15, what="the JWKS server")

    def call(token: str | None) -> int:
        return edge.https("eu.api.test", "/", *(["-H", f"Authorization: Bearer {token}"] if token else []))[0]

    variants = {
        "file": {"file": str(work / "jwks.json")},  # a file on the gateway's host
        "uri": {"uri": f"https://{w.address}:9600/jwks.json", "cacheDuration": "5m", "ca": edge.ca.pem.decode()},
    }
    try:
        for what, jwks in variants.items():
            doc = json.loads(_jwt_policy("users", "edge", issuer.jwks()))
            doc["spec"]["conf"]["jwks"] = jwks
            edge.mesh.apply(json.dumps(doc), wait=True)
            token = issuer.token(sub="carol")
            wait_until(lambda token=token: call(token) == 200, 30, interval=0.3, what=f"a token checked with the {what} JWKS")  # type: ignore[misc]
            assert call(None) == 401, what
            assert call(TestIssuer.make("https://login.example.test").token(sub="mallory")) == 401, what
        # keys that cannot be fetched (nothing listens there): a valid token is refused, and
        # the refusal says it is the proxy's fetch that failed, not the caller's token
        doc = json.loads(_jwt_policy("users", "edge", issuer.jwks()))
        doc["spec"]["conf"]["jwks"] = {"uri": f"https://{w.address}:9601/jwks.json", "ca": edge.ca.pem.decode()}
        edge.mesh.apply(json.dumps(doc), wait=True)
        path = f"/unfetchable-{uuid.uuid4().hex[:8]}"
        token = issuer.token(sub="carol")
        wait_until(lambda: edge.https("eu.api.test", path, "-H", f"Authorization: Bearer {token}")[0] == 401, 30,
                   interval=0.3, what="the token refused once the keys cannot be fetched")  # fmt: skip
        out = edge.mesh.cli("tap", "edge", "--path", path, "--replay", "5", "--max", "1", "-o", "json")
        explanation = json.loads(out.strip().splitlines()[-1])["explanation"]
        assert "could not fetch the JWKS" in explanation and "check the uri" in explanation, explanation
    finally:
        edge.mesh.cli("delete", "jwtauthentication", "users", check=False)
        server.stop()
    wait_until(lambda: call(None) == 200, 30, interval=0.2, what="the gateway without token checks")
