"""`meshline egress-gateway`: the agent running an egress gateway (no app beside it).

Thin wiring, as `meshline dataplane`: the agent's shared options plus a name and a port. The
gateway's Envoy listens on the port on every address of its host; sidecars reach it over mTLS
once a Mesh names it (``spec.egress.gateway``). See docs/egress.md and render/egress_gateway.py.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from meshline.agent.config import default_name
from meshline.cli.agent import F, _group_obj, _run_agent, build_config, dataplane, local_services

SHARED = ("--mesh", "--api", "--context", "--token", "--token-file", "--ca-file", "--xds-address", "--address",
          "--metrics-port", "--work-dir", "--envoy-concurrency", "--envoy-log-level", "--envoy-binary",
          "--drain-seconds", "--callers-ack-timeout", "--register-timeout", "--ready-timeout")


def _options(f: F) -> F:
    shared = [o for o in dataplane.params if isinstance(o, click.Option) and o.opts[0] in SHARED]
    own = [
        click.Option(["--name", "gateway_name"], required=True, envvar="MESHLINE_EGRESS_GATEWAY",
                     help="the gateway's name: its service and SPIFFE identity, what the Mesh's"
                          " spec.egress.gateway names"),
        click.Option(["--port"], type=click.IntRange(1, 65535), required=True, envvar="MESHLINE_PORT",
                     help="where sidecars reach it (mTLS), on every address of this host"),
        click.Option(["--dataplane-name"], default=None, envvar="MESHLINE_NAME",
                     help="this instance's Dataplane name [default: <name>-<hostname>-<port>]"),
    ]  # fmt: skip
    f.__click_params__ = [*getattr(f, "__click_params__", []), *reversed(shared), *reversed(own)]  # type: ignore[attr-defined]
    return f


@click.command("egress-gateway")
@_options
def egress_gateway(**opts: Any) -> None:
    """Run an egress gateway: the one proxy of the mesh that talks to ExternalServices, once
    the Mesh names it (spec.egress.gateway), so firewall rules can name one host.

    \b
    Example:
      meshline egress-gateway --name egress --port 10002 --token-file egress.token
    """
    name: str = opts.pop("gateway_name")
    port: int = opts.pop("port")
    dp_name = opts.pop("dataplane_name")
    # Its one inbound is Envoy's own port: the agent's "app is listening" check is Envoy's listener.
    opts.update(service=name, app_port=port, inbound_port=port, name=dp_name or default_name(name, port),
                protocol=None, tags=(), upstreams=(), app_metrics_url=None, transparent=False)  # fmt: skip
    config = build_config(opts, _group_obj())
    config.egress_gateway = True
    config.local_services = local_services(config)
    sys.exit(_run_agent(config, None))
