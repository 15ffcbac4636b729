"""The `meshline` command group. Every error prints one line and exits non-zero."""

from __future__ import annotations

import sys

import click

from meshline import __version__
from meshline.cli.agent import dataplane, run
from meshline.cli.controlplane import control_plane
from meshline.cli.dashboard import dashboard
from meshline.cli.observe import edges, explain, stat, tap, top
from meshline.cli.resources import apply, delete, get, inspect
from meshline.cli.token import token
from meshline.cli.up import up
from meshline.core.errors import MeshlineError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="meshline")
@click.option(
    "--api",
    envvar="MESHLINE_API",
    default=None,
    help="control-plane API URL [default: http://127.0.0.1:15681]",
)
@click.option("--token", envvar="MESHLINE_TOKEN", default=None, help="API token (see `meshline token`)")
@click.pass_context
def cli(ctx: click.Context, api: str | None, token: str | None) -> None:
    """Meshline: a service mesh for hosts, VMs and containers, with Envoy as its data plane."""
    ctx.obj = {"api": api, "token": token}


cli.add_command(control_plane)
cli.add_command(dataplane)
cli.add_command(run)
cli.add_command(apply)
cli.add_command(get)
cli.add_command(delete)
cli.add_command(inspect)
for _observe in (stat, top, edges, tap, explain):
    cli.add_command(_observe)
cli.add_command(up)
cli.add_command(token)
cli.add_command(dashboard)


def main() -> None:
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
