"""The `meshline` command group. Every error prints one line and exits non-zero."""

from __future__ import annotations

import importlib
import os
import sys

import click

from meshline import __version__
from meshline.core.errors import MeshlineError

# command -> "module:attribute". Imported on use: a sidecar's agent (`meshline dataplane`)
# would otherwise load the control plane, the API client and every policy, ~4 MB of private
# memory and ~0.1 s of start-up per sidecar for code it never runs.
COMMANDS = {
    "control-plane": "meshline.cli.controlplane:control_plane",
    "dataplane": "meshline.cli.agent:dataplane",
    "run": "meshline.cli.agent:run",
    "gateway": "meshline.cli.agent:gateway",
    "apply": "meshline.cli.resources:apply",
    "get": "meshline.cli.resources:get",
    "delete": "meshline.cli.resources:delete",
    "drain": "meshline.cli.drain:drain",
    "upgrade-sidecar": "meshline.cli.upgrade_sidecar:upgrade_sidecar",
    "upgrade-check": "meshline.cli.upgrade_check:upgrade_check",
    "inspect": "meshline.cli.resources:inspect",
    "stat": "meshline.cli.observe:stat",
    "top": "meshline.cli.observe:top",
    "edges": "meshline.cli.observe:edges",
    "tap": "meshline.cli.observe:tap",
    "explain": "meshline.cli.observe:explain",
    "up": "meshline.cli.up:up",
    "token": "meshline.cli.token:token",
    "dashboard": "meshline.cli.dashboard:dashboard",
    "context": "meshline.cli.context:context",
    "rollout": "meshline.cli.rollout:rollout",
    "transparent-proxy": "meshline.cli.transparent:transparent_proxy",
    "permissions": "meshline.cli.learn:permissions",
    "record": "meshline.cli.learn:record",
    "replay": "meshline.cli.learn:replay",
    "egress-gateway": "meshline.cli.egress:egress_gateway",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in COMMANDS and cmd_name not in self.commands:
            module, attr = COMMANDS[cmd_name].split(":")
            self.add_command(getattr(importlib.import_module(module), attr), cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="meshline")
@click.option(
    "--api",
    envvar="MESHLINE_API",
    default=None,
    help="control-plane API URL [default: the current context's, else http://127.0.0.1:15681]",
)
@click.option("--context", envvar="MESHLINE_CONTEXT", default=None,
              help="the named context to use (API URL, CA, token; see `meshline context list`)")
@click.option("--token", envvar="MESHLINE_TOKEN", default=None, help="API token (see `meshline token`)")
@click.pass_context
def cli(ctx: click.Context, api: str | None, context: str | None, token: str | None) -> None:
    """Meshline: a service mesh for hosts, VMs and containers, with Envoy as its data plane.

    Which control plane: --context NAME, else --api URL, else the current context (written by
    `meshline control-plane` and `meshline up`; `meshline context list`).
    """
    ctx.obj = {"api": api, "token": token, "context": context}



def quiet_grpc_core(environ: dict[str, str] | None = None) -> None:
    """gRPC's C core logs every failed TLS handshake on the xDS port at INFO, straight to
    stderr (`Handshake failed ... TLSV1_ALERT_DECRYPT_ERROR`, no peer, once per retry). Keep
    its errors only, unless the user chose a level: Meshline says what failed in its own
    words (the agent: which xDS address and CA it tried, see agent.xds_discovery)."""
    env = os.environ if environ is None else environ
    env.setdefault("GRPC_VERBOSITY", "ERROR")


def main() -> None:
    quiet_grpc_core()  # before any command imports grpc
    try:
        cli(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except click.exceptions.Exit as err:
        sys.exit(err.exit_code)
    except MeshlineError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
