"""Schemas of MeshGateway and MeshGatewayRoute, and the checks that need one resource only.

    kind: MeshGateway              # configures the gateways started with `meshline gateway --name edge`
    mesh: default
    name: edge
    spec:
      listeners:
        - {name: http, port: 8080, protocol: HTTP}
        - name: web
          port: 8443
          protocol: HTTPS
          hostname: web.example.test
          tls: {certificates: [web-example]}   # <certs dir>/web-example/tls.crt, tls.key on the gateway host
        - {name: tls, port: 9443, protocol: TLS, tls: {mode: Passthrough}}
        - {name: db, port: 5432, protocol: TCP}
    ---
    kind: MeshGatewayRoute
    mesh: default
    name: web
    spec:
      parents: [{gateway: edge, listener: web}]   # no listener: every listener of a fitting protocol
      hostnames: [web.example.test]
      rules:                                      # HTTPRoute's rules; each backend names its service
        - matches: [{path: {prefix: /api}}]
          backends: [{service: api}]
        - backends: [{service: web}]
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Literal

from pydantic import Field, field_validator

from meshline.core.errors import FieldProblem
from meshline.core.resource import Resource, spec_as
from meshline.core.schema import Duration, Name, Spec
from meshline.policies.common.backends import Backend, backend_problems
from meshline.policies.httproute.api import Rule

ListenerProtocol = Literal["HTTP", "HTTPS", "TLS", "TCP"]
RouteProtocol = Literal["http", "grpc", "tls", "tcp"]
# Which route protocols attach to which listener protocols (as in the Gateway API).
ATTACHES: dict[str, frozenset[str]] = {
    "HTTP": frozenset({"http", "grpc"}),
    "HTTPS": frozenset({"http", "grpc"}),
    "TLS": frozenset({"tls"}),
    "TCP": frozenset({"tcp"}),
}
_LABEL = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
HOSTNAME_RE = re.compile(rf"^(\*\.)?{_LABEL}(\.{_LABEL})*$")
MAX_LISTENERS = 64
MAX_CERTIFICATES = 16


def _hostname(v: str | None) -> str | None:
    if v is None:
        return v
    v = v.lower()
    if not HOSTNAME_RE.match(v) or len(v) > 253:
        raise ValueError(f"'{v}' is not a DNS name (a leading '*.' makes it a wildcard: *.example.test)")
    return v


def hostname_matches(pattern: str, name: str) -> bool:
    """Whether ``name`` (maybe itself a wildcard) is served by ``pattern`` (maybe a wildcard)."""
    if pattern == name:
        return True
    if pattern.startswith("*."):
        suffix = pattern[1:]  # ".example.test"
        if name.startswith("*."):
            return name[1:].endswith(suffix)
        return name.endswith(suffix) and len(name) > len(suffix)
    return False


def effective_hostnames(listener: str | None, route: list[str]) -> list[str]:
    """The hostnames a route serves on a listener: its own that the listener serves (the more
    specific of the two), else the listener's, else every host."""
    if not route:
        return [listener] if listener else ["*"]
    if not listener:
        return list(route)
    out = []
    for name in route:
        if hostname_matches(listener, name):
            out.append(name)
        elif name.startswith("*.") and hostname_matches(name, listener):
            out.append(listener)
    return sorted(set(out))


class ClientValidation(Spec):
    """Clients must present a certificate signed by ``ca`` (PEM bundle) to connect (mutual TLS
    with the outside world); the app gets the verified subject in ``x-client-subject`` (set by
    the gateway, never taken from the caller)."""

    ca: str = Field(min_length=1, max_length=64 * 1024)
    optional: bool = False  # true: a client without a certificate is let in, a bad one refused

    @field_validator("ca")
    @classmethod
    def _ca(cls, v: str) -> str:
        from meshline.core.tls_pair import load_certs

        if not load_certs(v.encode()):
            raise ValueError("holds no PEM certificate; paste the CA bundle that signs the clients' certificates")
        return v


class ListenerTLS(Spec):
    """``Terminate``: the gateway holds the certificates (HTTPS); ``Passthrough``: it routes the
    encrypted connection by SNI and never decrypts it (TLS)."""

    mode: Literal["Terminate", "Passthrough"] = "Terminate"
    # Names of certificates: <gateway's --certs-dir>/<name>/tls.crt and tls.key. Several: Envoy
    # picks by the client's SNI among their names (and by key type).
    certificates: list[Name] = Field(default_factory=list, max_length=MAX_CERTIFICATES)
    client_validation: ClientValidation | None = None


class Listener(Spec):
    name: Name
    port: int = Field(ge=1, le=65535)
    protocol: ListenerProtocol
    hostname: str | None = None  # what this listener serves (SNI for HTTPS/TLS, Host for HTTP)
    tls: ListenerTLS | None = None

    _h = field_validator("hostname")(classmethod(lambda cls, v: _hostname(v)))


class MeshGatewaySpec(Spec):
    listeners: list[Listener] = Field(min_length=1, max_length=MAX_LISTENERS)


class ParentRef(Spec):
    gateway: Name  # a MeshGateway (and the gateways started with `meshline gateway --name <it>`)
    listener: Name | None = None  # one of its listeners; none: every listener of a fitting protocol


_ORIGIN_RE = re.compile(r"^(\*|https?://(\*\.)?[A-Za-z0-9.-]+(:[0-9]{1,5})?)$")


class Cors(Spec):
    """Cross-origin requests from browsers: which origins may call (``*``, an origin, or
    ``https://*.example.test``), with which methods and headers; preflights are answered by the
    gateway (before any token check)."""

    allow_origins: list[str] = Field(min_length=1, max_length=64)
    allow_methods: list[str] = Field(default_factory=list)
    allow_headers: list[str] = Field(default_factory=list)
    expose_headers: list[str] = Field(default_factory=list)
    max_age: Duration | None = None
    allow_credentials: bool = False

    @field_validator("allow_origins")
    @classmethod
    def _origins(cls, v: list[str]) -> list[str]:
        for origin in v:
            if not _ORIGIN_RE.match(origin):
                raise ValueError(f"'{origin}' is not an origin: use *, https://app.example.test or https://*.example.test")
        return v


class MeshGatewayRouteSpec(Spec):
    parents: list[ParentRef] = Field(min_length=1)
    protocol: RouteProtocol = "http"
    hostnames: list[str] = Field(default_factory=list)
    rules: list[Rule] = Field(default_factory=list)  # http, grpc
    backends: list[Backend] = Field(default_factory=list)  # tls, tcp: where connections go
    cors: Cors | None = None  # http, grpc: for every rule of the route

    @field_validator("hostnames")
    @classmethod
    def _hostnames(cls, v: list[str]) -> list[str]:
        return [h for h in (_hostname(x) for x in v) if h is not None]


def _listener_problems(i: int, lst: Listener) -> Iterator[FieldProblem]:
    path = f"spec.listeners[{i}]"
    tls = lst.tls
    if lst.protocol in ("HTTP", "TCP") and tls is not None:
        yield FieldProblem(f"{path}.tls", f"a {lst.protocol} listener does not speak TLS; remove tls or use"
                                          f" protocol {'HTTPS' if lst.protocol == 'HTTP' else 'TLS'}")  # fmt: skip
    if lst.protocol == "TCP" and lst.hostname is not None:
        yield FieldProblem(f"{path}.hostname", "a TCP connection carries no hostname; remove it")
    if lst.protocol == "HTTPS":
        if tls is None or not tls.certificates:
            yield FieldProblem(f"{path}.tls.certificates", "an HTTPS listener terminates TLS: name at least one"
                                                           " certificate (a directory in the gateway's --certs-dir)")
        elif tls.mode != "Terminate":
            yield FieldProblem(f"{path}.tls.mode", "HTTPS terminates TLS; for passthrough use protocol TLS")
    if lst.protocol == "TLS":
        if tls is None or tls.mode != "Passthrough":
            yield FieldProblem(f"{path}.tls.mode", "a TLS listener passes connections through by SNI: set"
                                                   " tls: {mode: Passthrough} (use HTTPS to terminate TLS)")
        elif tls.certificates:
            yield FieldProblem(f"{path}.tls.certificates", "a passthrough listener never decrypts: remove the certificates")
        elif tls.client_validation is not None:
            yield FieldProblem(f"{path}.tls.clientValidation", "a passthrough listener never sees the client's"
                                                                " certificate (the backend does): remove it")  # fmt: skip


def gateway_problems(r: Resource) -> list[FieldProblem]:
    spec = spec_as(r, MeshGatewaySpec)
    problems: list[FieldProblem] = []
    names: dict[str, int] = {}
    by_port: dict[int, list[tuple[int, Listener]]] = {}
    for i, lst in enumerate(spec.listeners):
        if lst.name in names:
            problems.append(FieldProblem(f"spec.listeners[{i}].name", f"'{lst.name}' is also listeners[{names[lst.name]}];"
                                                                      " give each listener its own name"))  # fmt: skip
        names.setdefault(lst.name, i)
        problems.extend(_listener_problems(i, lst))
        by_port.setdefault(lst.port, []).append((i, lst))
    for port, group in by_port.items():
        problems.extend(_port_problems(port, group))
    return problems


def _port_problems(port: int, group: list[tuple[int, Listener]]) -> Iterator[FieldProblem]:
    """Listeners sharing a port must be told apart: HTTP by Host, HTTPS and TLS by SNI; TCP alone."""
    first_i, first = group[0]
    tls_family = {"HTTPS", "TLS"}
    hosts: dict[str, int] = {}
    for i, lst in group[1:]:
        same_family = lst.protocol == first.protocol or {lst.protocol, first.protocol} <= tls_family
        if not same_family or "TCP" in (lst.protocol, first.protocol):
            yield FieldProblem(
                f"spec.listeners[{i}].protocol",
                f"port {port} is also listeners[{first_i}] ({first.protocol}); {lst.protocol} and {first.protocol}"
                " cannot share a port (nothing tells their connections apart): give this listener another port",
            )
    for i, lst in group:
        key = lst.hostname or "*"
        if key in hosts:
            yield FieldProblem(
                f"spec.listeners[{i}].hostname",
                f"listeners[{hosts[key]}] on port {port} serves the same hostname ('{key}'); give each listener on"
                " a port its own hostname",
            )
        hosts.setdefault(key, i)


def route_problems(r: Resource) -> list[FieldProblem]:
    spec = spec_as(r, MeshGatewayRouteSpec)
    problems: list[FieldProblem] = []
    if spec.protocol in ("http", "grpc"):
        if spec.backends:
            problems.append(FieldProblem("spec.backends", f"a {spec.protocol} route sends requests by its rules;"
                                                          " move the backends into spec.rules[].backends"))  # fmt: skip
        if not spec.rules:
            problems.append(FieldProblem("spec.rules", "list at least one rule (a rule without matches takes every request)"))
        for i, rule in enumerate(spec.rules):
            for k, b in enumerate(rule.backends):
                if b.service is None:
                    problems.append(FieldProblem(f"spec.rules[{i}].backends[{k}].service",
                                                 "a gateway route has no called service to default to; name the service"))  # fmt: skip
            for k, m in enumerate(rule.mirrors):
                if m.service is None:
                    problems.append(FieldProblem(f"spec.rules[{i}].mirrors[{k}].service", "name the service to mirror to"))
            if not rule.backends and rule.redirect is None and rule.direct_response is None:
                problems.append(FieldProblem(f"spec.rules[{i}].backends", "name where requests go (or redirect,"
                                                                          " or answer with directResponse)"))  # fmt: skip
            problems.extend(backend_problems(f"spec.rules[{i}].backends", rule.backends))
    else:
        if spec.rules:
            problems.append(FieldProblem("spec.rules", f"a {spec.protocol} route has no requests to match; use spec.backends"))
        if not spec.backends:
            problems.append(FieldProblem("spec.backends", "name at least one service the connections go to"))
        for k, b in enumerate(spec.backends):
            if b.service is None:
                problems.append(FieldProblem(f"spec.backends[{k}].service", "name the service"))
        problems.extend(backend_problems("spec.backends", spec.backends))
        if spec.cors is not None:
            problems.append(FieldProblem("spec.cors", f"a {spec.protocol} route carries no HTTP requests; remove cors"))
        if spec.protocol == "tcp" and spec.hostnames:
            problems.append(FieldProblem("spec.hostnames", "a TCP connection carries no hostname; remove hostnames"))
        if spec.protocol == "tls" and not spec.hostnames:
            problems.append(FieldProblem("spec.hostnames", "a TLS passthrough route is picked by SNI: list the hostnames"))
    return problems


SEALED_PREFIX = "kek1:"  # security.crypto.KeyEncryptor.PREFIX: a key sealed by the control plane
MAX_PEM = 64 * 1024


class GatewayCertificateSpec(Spec):
    """A listener certificate kept by the control plane: ``certificate`` (PEM chain, leaf first)
    and ``privateKey`` (PEM; sealed before it is stored, never shown to non-admins)."""

    certificate: str = Field(min_length=1, max_length=MAX_PEM)
    private_key: str = Field(min_length=1, max_length=MAX_PEM)


def certificate_problems(r: Resource) -> list[FieldProblem]:
    """The key must be the leaf's and the leaf valid now (a sealed key was checked when sealed)."""
    from meshline.core.tls_pair import CertificateProblem, check_pair, load_certs

    spec = spec_as(r, GatewayCertificateSpec)
    chain = spec.certificate.encode()
    if spec.private_key.startswith(SEALED_PREFIX):
        certs = load_certs(chain)
        if not certs:
            return [FieldProblem("spec.certificate", "holds no PEM certificate; paste the chain (leaf first)")]
        import datetime

        if certs[0].not_valid_after_utc <= datetime.datetime.now(datetime.UTC):
            return [FieldProblem("spec.certificate", f"expired on {certs[0].not_valid_after_utc.isoformat()}; renew it")]
        return []
    try:
        check_pair(r.name, chain, spec.private_key.encode())
    except CertificateProblem as err:
        text = str(err)
        path = "spec.privateKey" if "tls.key" in text.split(" ", 1)[0] else "spec.certificate"
        text = text.replace(f"{r.name}/tls.key", "the private key").replace(f"{r.name}/tls.crt", "the certificate")
        return [FieldProblem(path, text)]
    return []
