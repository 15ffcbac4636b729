"""`meshline token issue | list | revoke`: API and dataplane tokens (admin token required)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from meshline.cli.output import echo, err_console, table
from meshline.cli.resources import client_from
from meshline.security.crypto import write_private
from meshline.security.kinds import TOKEN_KINDS


def _span(seconds: float) -> str:
    if seconds < 3600:
        return f"{max(1.0, seconds / 60):.0f}m"
    if seconds < 86400 * 2:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"


def _when(ts: float | None, now: float) -> str:
    if not ts:
        return "-"
    return f"in {_span(ts - now)}" if ts > now else f"{_span(now - ts)} ago"


def _scope(item: dict[str, Any]) -> str:
    parts = [item[k] for k in ("mesh", "service", "dataplane") if item.get(k)]
    return "/".join(parts) or "*"


@click.group("token")
def token() -> None:
    """Issue, list and revoke tokens for the API and for dataplanes.

    \b
    Kinds:
      admin      everything
      mesh       everything inside one mesh (--mesh)
      readonly   reads only (all meshes, or one with --mesh)
      dataplane  register one service's dataplanes, get their certificates, connect them
                 to xDS (--mesh, --service, optionally --name for one dataplane)
    """


@token.command("issue")
@click.option("--kind", "kind", type=click.Choice(TOKEN_KINDS), required=True)
@click.option("-m", "--mesh", default=None, help="the mesh (required for mesh and dataplane tokens)")
@click.option("--service", default=None, help="the service a dataplane token is for")
@click.option("--name", "dataplane", default=None, help="limit a dataplane token to this dataplane name")
@click.option("--zone", default=None, help="the zone a zone token is for (its control plane syncs with global)")
@click.option("--ttl", default="720h", show_default=True, help="lifetime, e.g. 24h, 30m, 8760h")
@click.option("--description", default=None, help="a note shown by `meshline token list`")
@click.option("--file", "out_file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="write the token to this file (mode 0600, only once issued) instead of stdout")
@click.pass_context
def issue(
    ctx: click.Context,
    kind: str,
    mesh: str | None,
    service: str | None,
    dataplane: str | None,
    zone: str | None,
    ttl: str,
    description: str | None,
    out_file: Path | None,
) -> None:
    """Print a new token on stdout (details on stderr), or write it to --file, e.g.

    \b
      meshline token issue --kind dataplane --mesh default --service orders --file orders.token
      meshline dataplane --token-file orders.token ...

    (`> orders.token` also works, but the shell creates that file readable by others, and
    empty when the command fails.)
    """
    body = {"kind": kind, "mesh": mesh, "service": service, "dataplane": dataplane, "ttl": ttl,
            **({"zone": zone} if zone else {})}
    if description:
        body["description"] = description
    with client_from(ctx) as c:
        data = c.request("POST", "/api/v1/tokens", json=body)
    scope = ", ".join(f"{k} {data[k]}" for k in ("mesh", "service", "dataplane", "zone") if data.get(k))
    err_console.print(
        f"{data['kind']} token {data['id']}" + (f" ({scope})" if scope else "")
        + f", expires {_when(data['expiresAt'], time.time())}; revoke with `meshline token revoke {data['id']}`"
    )
    if out_file is not None:
        write_private(out_file, data["token"] + "\n")
        err_console.print(f"wrote it to {out_file} (mode 0600)")
        return
    click.echo(data["token"])


@token.command("list")
@click.option("--all", "show_all", is_flag=True, help="also show expired and revoked tokens")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@click.pass_context
def list_tokens(ctx: click.Context, show_all: bool, output: str) -> None:
    """Tokens this control plane issued (never the token text itself)."""
    with client_from(ctx) as c:
        items = c.get("/api/v1/tokens")["items"]
    if not show_all:
        items = [i for i in items if i["state"] == "active"]
    if output == "json":
        echo(json.dumps(items, indent=2))
        return
    if not items:
        echo("No tokens." if show_all else "No active tokens (--all shows expired and revoked ones).")
        return
    now = time.time()
    colour = {"active": "green", "revoked": "red", "expired": "dim"}
    table(
        ["ID", "KIND", "SCOPE", "STATE", "EXPIRES"],
        [
            [
                i["id"],
                i["kind"],
                _scope(i),
                f"[{colour[i['state']]}]{i['state']}[/{colour[i['state']]}]",
                _when(i.get("expiresAt"), now),
            ]
            for i in items
        ],
    )


@token.command("revoke")
@click.argument("token_id", metavar="ID")
@click.pass_context
def revoke(ctx: click.Context, token_id: str) -> None:
    """Revoke a token at once on every control-plane replica (see `meshline token list` for IDs).

    Certificates already issued with it stay valid until they expire (at most the mesh's
    certLifetime); the dataplane cannot renew them.
    """
    with client_from(ctx) as c:
        data = c.request("POST", f"/api/v1/tokens/{token_id}/revoke")
    echo(f"token {data['id']} ({data['kind']}) revoked")
