"""Tables, errors and progress for the terminal."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import click
from rich.console import Console
from rich.table import Table

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


WIDE_WIDTH = 100_000  # columns of a "wide" table: never cut a cell


def table_console(wide: bool = False) -> Console:
    """The terminal's width on a terminal; a wide console when piped (a script or `grep`
    must see whole names, not `orders-to-inven...`) or with ``-o wide``."""
    if wide or not console.is_terminal:
        return Console(highlight=False, width=WIDE_WIDTH, soft_wrap=True)
    return console


def table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], title: str | None = None, wide: bool = False
) -> None:
    t = Table(title=title, box=None, header_style="bold", pad_edge=False)
    for h in headers:
        t.add_column(h, overflow="fold")
    for row in rows:
        t.add_row(*("" if c is None else str(c) for c in row))
    table_console(wide).print(t)


def fail(message: str, code: int = 1) -> None:
    err_console.print(f"[red]error:[/red] {message}", soft_wrap=True)
    sys.exit(code)


@contextmanager
def progress(message: str) -> Iterator[None]:
    """A spinner for anything that may take more than a second (only on a terminal)."""
    if sys.stderr.isatty():
        with err_console.status(message):
            yield
    else:
        yield


def echo(message: str = "") -> None:
    click.echo(message)
