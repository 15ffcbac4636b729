"""`meshline dashboard`: the address of the control plane's dashboard, signed in.

The address carries the token in its fragment (``/#token=...``): browsers never send a
fragment to a server, and the page moves it to the tab's session storage and out of the
address bar at once. On the control plane's host the token is the local admin token
(as for every other command); elsewhere pass --token or MESHLINE_TOKEN.
"""

from __future__ import annotations

import webbrowser

import click

from meshline.api.client import ApiClient
from meshline.cli.output import echo, err_console
from meshline.core.errors import Unauthorized
from meshline.dashboard import dashboard_url


@click.command()
@click.option("--open", "open_browser", is_flag=True, help="open it in the default web browser too")
@click.option("--no-token", is_flag=True, help="leave the token out (the page asks for one)")
@click.pass_context
def dashboard(ctx: click.Context, open_browser: bool, no_token: bool) -> None:
    """Print the dashboard's address (signed in with your token); --open opens it.

    \b
      meshline dashboard --open
      meshline --api http://cp.example:15681 --token "$(cat readonly.token)" dashboard
    """
    obj = ctx.find_root().obj or {}
    with ApiClient(obj.get("api"), token="" if no_token else obj.get("token"), context=obj.get("context")) as client:
        api, token = client.url, client.connection.token
        client.get("/api/v1/health")  # says how to start the control plane when it is not there
        try:
            client.get("/api/v1/meshes")
        except Unauthorized as err:
            if token:
                raise Unauthorized(f"the control plane refused the token: {err}") from None
            err_console.print(
                "note: this control plane needs a token and none was found; the page will ask for one"
                " (issue one with `meshline token issue --kind readonly --ttl 8h`)",
                soft_wrap=True,
            )
    url = dashboard_url(api, token)
    echo(url)
    if token:
        err_console.print("The address holds your token: share the page, not the address.", style="dim")
    if open_browser and not webbrowser.open(url):
        err_console.print("No web browser found here; open the address above.")
