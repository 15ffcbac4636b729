"""Egress across real hosts (network namespaces): a meshed app calls the "internet".

Hosts: ``cp`` (the control plane and the hosts' ordinary resolver, which knows
``api.example.test`` and ``wrong.example.test`` as host ``i``), ``a`` (a transparent workload
``web``), ``i`` (the "internet": nginx with TLS, its certificate from a CA this test makes,
and plain HTTP on port 80) and ``j`` (more "internet": nginx, plain HTTP). ``b`` an explicit-mode workload (``--upstream api.example.test=15010``), ``g`` runs the egress
gateway. The app on ``a`` is
curl: it calls ``http://api.example.test/``, plain HTTP; its sidecar speaks TLS to nginx and
verifies it. nginx's access log says who connected, over what.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meshline.testing.hostmesh import HostMesh
from meshline.testing.mesh import wait_until
from meshline.testing.netns import Host, TestNetwork, require_netns

APPS = [sys.executable, "-m", "meshline.testing.apps"]
ALLOW_ALL = """
kind: TrafficPermission
mesh: default
name: everyone
spec:
  sources: [{match: {service: '*'}}]
  destinations: [{match: {service: '*'}}]
  action: allow
"""
HELLO = "hello from the internet"
SILENT_PORT = 9999


# -- the "internet" ------------------------------------------------------------------------


def make_ca(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))  # fmt: skip
    return key, cert


def make_server_cert(ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate], names: list[str]) -> tuple[bytes, bytes]:
    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
            .sign(ca_key, hashes.SHA256()))  # fmt: skip
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())  # fmt: skip
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


NGINX = """
daemon off;
user root;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/error.log;
events {{ worker_connections 64; }}
http {{
  client_body_temp_path {work}/body; proxy_temp_path {work}/proxy; fastcgi_temp_path {work}/fcgi;
  uwsgi_temp_path {work}/uwsgi; scgi_temp_path {work}/scgi;
  log_format who '$remote_addr $server_port $ssl_protocol $ssl_server_name "$request" $status';
  access_log {work}/access.log who;
  server {{
    listen {address}:80;
    location / {{ return 200 "{hello} (plain)\\n"; }}
  }}
  {tls}
}}
"""
NGINX_TLS = """
  server {{
    listen {address}:443 ssl;
    server_name api.example.test wrong.example.test;
    ssl_certificate {work}/server.pem;
    ssl_certificate_key {work}/server.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {{ return 200 "{hello} (tls)\\n"; }}
    location /flaky {{ return 503 "flaky\\n"; }}
    location /slow {{ proxy_pass http://127.0.0.1:{silent}; }}
  }}
"""


@dataclass
class Internet:
    host: Host
    work: Path

    def access_log(self) -> list[str]:
        path = self.work / "access.log"
        return path.read_text().splitlines() if path.exists() else []


def start_nginx(host: Host, work: Path, server: tuple[bytes, bytes] | None) -> Internet:
    work.mkdir(parents=True, exist_ok=True)
    tls = ""
    if server is not None:
        (work / "server.pem").write_bytes(server[0])
        (work / "server.key").write_bytes(server[1])
        (work / "server.key").chmod(0o600)
        tls = NGINX_TLS.format(address=host.address, work=work, hello=HELLO, silent=SILENT_PORT)
        # /slow: nginx waits on a server that accepts and never answers (the sidecar's Timeout ends it)
        host.spawn("silent", [sys.executable, "-c", "import socket, time; s = socket.socket(); "
                              f"s.bind(('127.0.0.1', {SILENT_PORT})); s.listen(128); time.sleep(3600)"])  # fmt: skip
    (work / "nginx.conf").write_text(NGINX.format(work=work, address=host.address, hello=HELLO, tls=tls))
    proc = host.spawn("nginx", ["nginx", "-p", str(work), "-c", str(work / "nginx.conf")])
    wait_until(lambda: host.curl(f"http://{host.address}/")[0] == 200 or not proc.alive(), 15, what="nginx")
    assert proc.alive(), proc.log() + (work / "error.log").read_text()
    return Internet(host, work)


# -- the mesh ---------------------------------------------------------------------------


def external(name: str, host: str, ca: str) -> dict[str, Any]:
    """An ExternalService reached over TLS the sidecar originates, verified by ``ca``."""
    return {"kind": "ExternalService", "mesh": "default", "name": name,
            "spec": {"host": host, "port": 443, "protocol": "http", "tls": {"ca": {"pem": ca}}}}  # fmt: skip


class World:
    def __init__(self, net: TestNetwork, mesh: HostMesh, internet: Internet, other: Internet, ca: str,
                 wrong_ca: str) -> None:  # fmt: skip
        self.net, self.mesh, self.internet, self.other = net, mesh, internet, other
        self.ca, self.wrong_ca = ca, wrong_ca
        self.a = net.hosts["a"]

    def set_mesh(self, egress: dict[str, Any] | None = None, **transparent_proxy: Any) -> None:
        # every success streamed: records() reads them back from the control plane's memory
        spec = {"mtls": {"mode": "strict"}, "transparentProxy": transparent_proxy, "egress": egress or {},
                "logging": {"successes": 100}}
        try:
            self.mesh.apply(json.dumps({"kind": "Mesh", "name": "default", "spec": spec}), wait=True)
        except AssertionError as err:  # what each sidecar runs, to tell why one did not ACK
            details = [str(err)]
            for name in ("web-a", "legacy-b"):
                details.append(self.mesh.cli("get", "dataplane", name, "-o", "json", check=False))
                sock = self.mesh.work / "dp" / name / "admin.sock"
                host = self.a if name == "web-a" else self.net.hosts["b"]
                dump = host.run(["curl", "-sS", "--unix-socket", str(sock),
                                 "http://envoy/config_dump?include_eds&resource=dynamic_endpoint_configs"]).stdout
                details.append(f"{name} EDS: {dump[:3000]}")
                details.append(host.run(["curl", "-sS", "--unix-socket", str(sock), "http://envoy/clusters"]).stdout[-3000:])
            (self.net.work_dir / "not-acked.txt").write_text("\n".join(details))
            raise AssertionError("\n".join(details)) from None

    def records(self) -> list[dict[str, Any]]:
        """What `meshline tap web` would show of web's recent traffic (the control plane's memory)."""
        return self.mesh.recent("web")

    def explained(self, needle: str) -> dict[str, Any]:
        found: list[dict[str, Any]] = []

        def seen() -> bool:
            found[:] = [r for r in self.records() if needle in r.get("explanation", "")]
            return bool(found)

        wait_until(seen, 30, interval=0.5, what=f"a tapped entry explained with {needle!r}")
        return found[-1]

    def envoy_stat(self, name: str) -> int:
        sock = self.mesh.work / "dp" / "web-a" / "admin.sock"
        done = self.a.run(["curl", "-sS", "--unix-socket", str(sock), "http://envoy/stats?filter=outbound_blocked"])
        stats = dict(line.split(": ", 1) for line in done.stdout.splitlines() if ": " in line)
        assert done.returncode == 0 and stats, (done.stdout, done.stderr)
        self.last_stats = stats
        return int(stats.get(name, "0"))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    require_netns("nft", "curl", "nginx")
    work = tmp_path_factory.mktemp("egress")
    ca, wrong = make_ca("internet CA"), make_ca("some other CA")
    with TestNetwork(work) as net:
        cp, a, b, i, j, g = (net.host(n) for n in ("cp", "a", "b", "i", "j", "g"))
        for h in (cp, a, b, i, j, g):
            h.set_resolver(cp.address)
        dns = cp.spawn("resolver", [*APPS, "dns", "--port", "53", "--record", f"api.example.test={i.address}",
                                    "--record", f"wrong.example.test={i.address}",
                                    "--record", f"plain.example.test={j.address}",
                                    "--record", f"api.allowed.test={i.address}",
                                    "--record", f"api.denied.test={i.address}"])  # fmt: skip
        wait_until(lambda: "serving DNS" in dns.log() or not dns.alive(), 15, what="the test resolver")
        internet = start_nginx(i, work / "nginx-i", make_server_cert(ca, ["api.example.test", "wrong.example.test"]))
        other = start_nginx(j, work / "nginx-j", None)
        mesh = HostMesh(net, work).start()
        mesh.apply(ALLOW_ALL)
        mesh.apply("\n---\n".join(json.dumps(d) for d in (
            external("httpbin", "api.example.test", pem(ca[1])), external("wrongca", "wrong.example.test", pem(wrong[1])))))
        mesh.run(a, "web", 9000, [*APPS, "http", "--name", "web-a", "--port", "9000", "--host", "0.0.0.0"],
                 protocol="http")  # fmt: skip
        # an explicit-mode workload (no capture on b): reaches the external service at 127.0.0.1:15010
        mesh.run(b, "legacy", 9100, [*APPS, "http", "--name", "legacy-b", "--port", "9100"], protocol="http",
                 transparent=False, extra=["--upstream", "api.example.test=15010"])  # fmt: skip
        world = World(net, mesh, internet, other, pem(ca[1]), pem(wrong[1]))
        try:
            yield world
        finally:
            mesh.stop()


def test_the_sidecar_originates_tls_to_an_external_service_and_verifies_the_server(world: World) -> None:
    world.set_mesh(passthrough="all")
    # mesh DNS answers the external host with its VIP; the app speaks plain HTTP to it
    vip = {s["name"]: s["spec"]["vip"] for s in world.mesh.get("services")}["httpbin"]
    got: list[Any] = []
    wait_until(lambda: bool(got.append(world.a.curl("http://api.example.test/hello")) or got[-1][0] == 200), 30,
               interval=0.3, what="api.example.test through web's sidecar")  # fmt: skip
    assert got[-1][1] == f"{HELLO} (tls)\n", got[-1]
    resolved = world.a.run([*APPS, "client", "resolve", "api.example.test", "--timeout", "5"]).stdout
    assert vip in resolved
    # nginx saw a TLS connection from web's host, with the external host as SNI
    line = next(x for x in reversed(world.internet.access_log()) if "/hello" in x)
    remote, port, protocol, sni = line.split(" ")[:4]
    assert (remote, port, sni) == (world.a.address, "443", "api.example.test") and protocol == "TLSv1.3", line


def test_a_server_that_the_ca_bundle_does_not_vouch_for_is_refused_and_explained(world: World) -> None:
    world.set_mesh(passthrough="all")
    code, body = world.a.curl("http://wrong.example.test/secret")
    assert code == 503, body
    assert not any("/secret" in x for x in world.internet.access_log())  # no request went out
    record = world.explained("TLS handshake with")
    assert record["destination"] == "wrongca"
    assert "CERTIFICATE VERIFY FAILED" in record["explanation"], record
    assert "unable to get local issuer certificate" in record["explanation"], record
    assert record["explanation"].endswith("; check ExternalService wrongca's spec.tls (its CA bundle and the server"
                                          " name wrong.example.test must present); gave up after 3 attempts"), record


def test_an_explicit_workload_reaches_the_external_service_through_an_outbound_port(world: World) -> None:
    b = world.net.hosts["b"]
    # the app calls 127.0.0.1:15010; its sidecar sends the external host as Host and SNI, over TLS
    assert b.curl("http://127.0.0.1:15010/explicit") == (200, f"{HELLO} (tls)\n")
    line = next(x for x in reversed(world.internet.access_log()) if "/explicit" in x)
    assert line.split(" ")[0] == b.address and " api.example.test " in line, line


def test_retries_and_timeouts_apply_to_an_external_service_as_to_a_mesh_service(world: World) -> None:
    world.set_mesh(passthrough="all")
    world.mesh.apply(textwrap.dedent("""
        kind: Retry
        mesh: default
        name: httpbin-retry
        spec:
          destinations: [{match: {service: httpbin}}]
          conf: {http: {attempts: 3, retriableStatusCodes: [503], budget: {disabled: true}}}
        ---
        kind: Timeout
        mesh: default
        name: httpbin-timeout
        spec:
          destinations: [{match: {service: httpbin}}]
          conf: {http: {requestTimeout: 1s}}
        """), wait=True)
    try:
        assert world.a.curl("http://api.example.test/flaky")[0] == 503
        flaky = world.explained("answered 503")
        assert flaky["destination"] == "httpbin" and "Retry httpbin-retry" in flaky["explanation"], flaky
        assert sum("/flaky" in x for x in world.internet.access_log()) == flaky["attempts"] >= 2
        # the explicit workload's outbound (named by host) got the Retry too
        before = sum("/flaky-explicit" in x for x in world.internet.access_log())
        assert world.net.hosts["b"].curl("http://127.0.0.1:15010/flaky-explicit")[0] == 503
        assert sum("/flaky-explicit" in x for x in world.internet.access_log()) - before == flaky["attempts"]
        assert world.a.curl("http://api.example.test/slow")[0] == 504
        slow = world.explained("timed out after 1s")
        assert "Timeout httpbin-timeout" in slow["explanation"], slow
    finally:
        world.mesh.cli("delete", "retry", "httpbin-retry", "-m", "default")
        world.mesh.cli("delete", "timeout", "httpbin-timeout", "-m", "default")


def test_passthrough_declared_refuses_an_undeclared_destination_and_explains_it(world: World) -> None:
    other = world.other.host.address
    world.set_mesh(passthrough="all")
    assert world.a.curl(f"http://{other}/before")[0] == 200  # all: anything goes out
    world.set_mesh(passthrough="declared")
    before = world.envoy_stat("tcp.outbound_blocked.downstream_cx_total")
    assert world.a.curl(f"http://{other}/after")[0] == 0  # refused: the connection is closed
    assert not any("/after" in x for x in world.other.access_log())
    record = world.explained(f"blocked: {other}:80")
    assert record["explanation"] == f"blocked: {other}:80 is not an ExternalService of mesh default and passthrough is declared"
    assert record["failed"] and record["destination"] == "(blocked)"
    assert world.envoy_stat("tcp.outbound_blocked.downstream_cx_total") > before, world.last_stats  # counted
    edges = json.loads(world.mesh.cli("stat", "-o", "json"))
    assert "(blocked)" in json.dumps(edges), edges  # an edge web -> (blocked) in the golden signals
    sock = world.mesh.work / "dp" / "web-a" / "admin.sock"
    prom = world.a.run(["curl", "-sS", "--unix-socket", str(sock), "http://envoy/stats/prometheus"]).stdout
    assert 'envoy_tcp_downstream_cx_total{envoy_tcp_prefix="outbound_blocked"}' in prom
    # a declared destination still passes
    assert world.a.curl("http://api.example.test/declared") == (200, f"{HELLO} (tls)\n")


def test_an_allow_list_by_cidr_lets_a_network_through_with_passthrough_declared(world: World) -> None:
    other = world.other.host.address
    world.set_mesh(passthrough="declared", allow=[{"cidr": f"{other}/32", "port": 80}])
    assert world.a.curl(f"http://{other}/allowed") == (200, f"{HELLO} (plain)\n")
    assert world.a.curl(f"http://{world.internet.host.address}/not-allowed")[0] == 0  # outside the list
    world.set_mesh(passthrough="none")  # nothing leaves: ExternalServices neither
    assert world.a.curl("http://api.example.test/none")[0] != 200
    assert world.a.curl(f"http://{other}/none")[0] == 0


def test_an_allow_list_by_domain_matches_the_tls_server_name_the_app_sends(world: World) -> None:
    world.set_mesh(passthrough="declared", allow=[{"domain": "*.allowed.test"}])
    # the app speaks TLS itself (-k: nginx's certificate names other hosts); its SNI decides
    assert world.a.curl("https://api.allowed.test/by-domain", "-k") == (200, f"{HELLO} (tls)\n")
    assert world.a.curl("https://api.denied.test/by-domain", "-k")[0] == 0
    record = world.explained("blocked: api.denied.test")
    assert record["explanation"] == "blocked: api.denied.test is not an ExternalService of mesh default and passthrough is declared"


@contextlib.contextmanager
def egress_gateway(world: World) -> Iterator[Host]:
    """An egress gateway on host g, named by the Mesh (passthrough declared) while in use."""
    g = world.net.hosts["g"]
    mesh = world.mesh
    proc = g.spawn("egress-gateway", [
        sys.executable, "-m", "meshline", "gateway", "--kind", "egress", "--name", "egress", "--port", "10002",
        "--api", mesh.api_url, "--ca-file", str(mesh.ca_file), "--token-file", str(mesh.token("egress")),
        "--work-dir", str(mesh.work / "dp" / "egress-g"), "--drain-seconds", "0"])  # fmt: skip
    mesh.agents["egress-g"] = proc
    try:
        wait_until(lambda: any(d["spec"].get("proxy") == "egress-gateway" and d["spec"].get("ready")
                               for d in mesh.dataplanes().values()) or not proc.alive(), 60,
                   what="the egress gateway to register ready")  # fmt: skip
        assert proc.alive(), proc.log()
        world.set_mesh(passthrough="declared", egress={"gateway": "egress"})
        yield g
    finally:
        world.set_mesh(passthrough="all")
        proc.stop(timeout=20)


def test_with_an_egress_gateway_only_the_gateway_talks_to_the_outside(world: World) -> None:
    with egress_gateway(world) as g:
        before = len(world.internet.access_log())
        for n in range(5):
            assert world.a.curl(f"http://api.example.test/via-gateway-{n}") == (200, f"{HELLO} (tls)\n")
        seen = world.internet.access_log()[before:]
        assert len(seen) == 5, seen
        # nginx saw every connection come from the gateway's host, over TLS with the external host's name
        assert {line.split(" ")[0] for line in seen} == {g.address}, seen
        assert all(" api.example.test " in line and " TLSv1." in line for line in seen), seen
        # the caller's sidecar went to the gateway (its own address), over mesh mTLS
        # (the sidecar streams its entries in batches, within a second)
        record = wait_until(lambda: next((r for r in reversed(world.records()) if r.get("path") == "/via-gateway-4"),
                                         None), 15, interval=0.3, what="the call's entry at the control plane")  # fmt: skip
        assert record["upstreamHost"].startswith(f"{g.address}:10002"), record
        assert record["destination"] == "httpbin" and record["status"] == 200


DENY_WEB_TO_HTTPBIN = """
kind: TrafficPermission
mesh: default
name: no-httpbin-for-web
spec:
  sources: [{match: {service: web}}]
  destinations: [{match: {service: httpbin}}]
  action: deny
"""


def test_the_egress_gateway_enforces_traffic_permissions_on_external_services(world: World) -> None:
    """Who may call an ExternalService: checked by the egress gateway on the caller's certificate."""
    mesh = world.mesh
    with egress_gateway(world):
        assert world.a.curl("http://api.example.test/before-deny") == (200, f"{HELLO} (tls)\n")
        mesh.apply(DENY_WEB_TO_HTTPBIN, wait=True)
        try:
            # the gateway says which policy refuses the connection
            gateway = next(n for n, d in mesh.dataplanes().items() if d["spec"].get("proxy") == "egress-gateway")
            inspected = mesh.cli("inspect", "dataplane", gateway)
            assert "no-httpbin-for-web" in inspected, inspected
            # sidecars pool their connections to the gateway; the gateway closes those on the
            # chain it replaced once its drain time is over, and checks the new ones
            wait_until(lambda: world.a.curl("http://api.example.test/draining")[0] == 503, 15, interval=0.2,
                       what="the gateway to refuse web's new connections")  # fmt: skip
            before = len(world.internet.access_log())
            status, body = world.a.curl("http://api.example.test/denied")
            assert status == 503, (status, body, inspected)
            assert world.internet.access_log()[before:] == []  # it never left the mesh
            record = wait_until(lambda: next((r for r in reversed(world.records()) if r.get("path") == "/denied"),
                                             None), 15, interval=0.3, what="the refused call's entry")  # fmt: skip
            assert record["status"] == 503 and record["upstreamHost"].startswith(world.net.hosts["g"].address), record
            assert record["explanation"] == ("refused by egress gateway egress: TrafficPermission no-httpbin-for-web"
                                             " denies web -> httpbin"), record
        finally:
            mesh.cli("delete", "trafficpermission", "no-httpbin-for-web")
        wait_until(lambda: world.a.curl("http://api.example.test/after-deny")[0] == 200, 15,
                   what="the call allowed again once the deny is deleted")  # fmt: skip
