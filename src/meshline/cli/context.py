"""`meshline context list | use | current | add | delete`: the CLI's named control planes."""

from __future__ import annotations

from pathlib import Path

import click

from meshline.api import contexts as ctxs
from meshline.cli.output import echo, err_console, table
from meshline.core.errors import MeshlineError


@click.group("context")
def context() -> None:
    """Named control planes (API URL, CA, token file), like kubeconfig contexts.

    \b
    `meshline control-plane` and `meshline up` add a context for the control plane they run
    (`local`, or `local-<port>` off the default port) and make it current. Choose one for a
    single command with `meshline --context NAME ...`, or for every command with
    `meshline context use NAME`. The file: $MESHLINE_CONFIG, else ~/.config/meshline/config.yaml.
    """


@context.command("list")
def list_contexts() -> None:
    """Every context; * marks the current one."""
    c = ctxs.load()
    if not c.items:
        echo(f"No contexts in {c.path} yet: `meshline control-plane` or `meshline up` add one,"
             " or `meshline context add NAME --api URL --token-file FILE`.")  # fmt: skip
        return
    rows = [
        ["*" if x.name == c.current else "", x.name, x.api, x.token_file or "-", x.ca_file or "-"]
        for x in c.items.values()
    ]
    table(["", "NAME", "API", "TOKEN FILE", "CA FILE"], rows)


@context.command("current")
def current() -> None:
    """The current context's name and what it points at."""
    c = ctxs.load()
    if not c.current or c.current not in c.items:
        raise MeshlineError(f"no current context in {c.path}; choose one with `meshline context use NAME`")
    x = c.items[c.current]
    echo(f"{x.name}  {x.api}  token {x.token_file or '-'}")


@context.command("use")
@click.argument("name")
def use(name: str) -> None:
    """Make NAME the current context."""
    with ctxs.editing() as c:
        x = c.get(name)
        c.current = name
    err_console.print(f"current context: {name} ({x.api})")


@context.command("add")
@click.argument("name")
@click.option("--api", "api", required=True, help="the control plane's API URL, e.g. https://cp.example:15681")
@click.option("--token-file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="file holding the token to send (its path is stored, not the token)")
@click.option("--ca-file", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="PEM CA that signed an https API's certificate")
@click.option("--use/--no-use", "make_current", default=True, show_default=True, help="make it current")
def add(name: str, api: str, token_file: Path | None, ca_file: Path | None, make_current: bool) -> None:
    """Add (or replace) a context."""
    if "://" not in api:
        raise MeshlineError(f"--api '{api}' must be a URL, e.g. http://127.0.0.1:15681")
    with ctxs.editing() as c:
        c.items[name] = ctxs.Context(
            name=name,
            api=api.rstrip("/"),
            token_file=str(token_file.resolve()) if token_file else None,
            ca_file=str(ca_file.resolve()) if ca_file else None,
        )
        if make_current:
            c.current = name
    err_console.print(f"context {name} ({api})" + (", now current" if make_current else ""))


@context.command("delete")
@click.argument("name")
def delete(name: str) -> None:
    """Forget a context (the control plane and its files stay)."""
    with ctxs.editing() as c:
        c.get(name)
        del c.items[name]
        if c.current == name:
            c.current = None
    err_console.print(f"context {name} deleted")
