"""`meshline rollout status|promote|pause|resume|abort NAME`: watch and steer a Rollout."""

from __future__ import annotations

import json
import time
from typing import Any

import click
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from meshline.api.client import ApiClient
from meshline.cli.output import console, echo

MESH = click.option("-m", "--mesh", default="default", show_default=True)
FINAL = ("promoted", "rolledBack", "aborted")
COLOURS = {"progressing": "cyan", "waiting": "yellow", "paused": "yellow", "promoted": "green",
           "rolledBack": "red", "aborted": "red"}  # fmt: skip


def _client(ctx: click.Context) -> ApiClient:
    obj = ctx.find_root().obj or {}
    return ApiClient(obj.get("api"), obj.get("token"), context=obj.get("context"))


@click.group()
def rollout() -> None:
    """Watch and steer progressive releases (kind: Rollout; see docs/rollouts.md)."""


def _status(ctx: click.Context, mesh: str, name: str) -> dict[str, Any]:
    with _client(ctx) as c:
        data: dict[str, Any] = c.get(f"/api/v1/meshes/{mesh}/rollouts/{name}/status")
    return data


def _num(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}%" if unit == "%" else f"{value:g} ms"


def view(data: dict[str, Any]) -> Group:
    """The rollout as text: phase, steps with the current one marked, weights, checks, history."""
    state = data.get("state") or {}
    spec = data["rollout"]["spec"]
    phase = state.get("phase", "starting")
    colour = COLOURS.get(phase, "white")
    head = Text.from_markup(
        f"[bold]Rollout {data['rollout']['name']}[/bold] ({spec['service']}: {spec['stable']['version']} ->"
        f" {spec['candidate']['version']})  [{colour}]{phase}[/{colour}]"
        + (f"  {state['reason']}" if state.get("reason") else "")
        + (f"  [dim](driven by {state['driver']})[/dim]" if state.get("driver") else "")
    )
    w = state.get("weights") or {}
    weights = Text(f"weights: stable {w.get('stable', 100)}%  candidate {w.get('candidate', 0)}%"
                   + (f"  mirror {w['mirror']:g}%" if w.get("mirror") else "")
                   + ("  A/B: marked requests to the candidate" if w.get("ab") else "")
                   + ("  testers pinned to the candidate" if w.get("testers") else ""))  # fmt: skip
    steps = Table("", "STEP", box=None, show_header=False)
    for i, desc in enumerate(state.get("stages", [])):
        current = i == state.get("stage") and phase not in FINAL
        mark = ">" if current else ("✓" if i < state.get("stage", 0) or phase == "promoted" else " ")
        steps.add_row(mark, f"{i + 1}. {desc}")
    checks = Table("CHECK", "WINDOW", "CANDIDATE", "STABLE", "REQUESTS", "VERDICT", box=None)
    for c in state.get("checks", []):
        unit = "%" if c["metric"] == "successRate" else "ms"
        vc = {"pass": "green", "fail": "red"}.get(c["verdict"], "yellow")
        checks.add_row(c["metric"], f"{c['window']:g}s", _num(c["candidate"], unit), _num(c["stable"], unit),
                       f"{c['candidateRequests']}/{c['stableRequests']}", f"[{vc}]{c['verdict']}[/{vc}]")
    history = Table("AT", "STEP", "EVENT", "DETAIL", box=None)
    start = state.get("started") or 0
    for h in state.get("history", [])[-8:]:
        times = f" x{h['times']}" if h.get("times") else ""
        history.add_row(f"+{h['at'] - start:.1f}s", str(h["stage"] + 1), h["event"] + times, h["detail"][:100])
    return Group(head, weights, steps, checks, history)


@rollout.command()
@click.argument("name")
@MESH
@click.option("-w", "--watch", is_flag=True, help="a live view until the rollout ends (Ctrl-C leaves it running)")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@click.option("--interval", type=float, default=0.5, show_default=True, hidden=True)
@click.pass_context
def status(ctx: click.Context, name: str, mesh: str, watch: bool, output: str, interval: float) -> None:
    """A rollout's phase, step, weights and each check's measured values and verdict."""
    data = _status(ctx, mesh, name)
    if output == "json":
        echo(json.dumps(data, indent=2))
        return
    if not watch:
        console.print(view(data))
        return
    with Live(view(data), console=console, auto_refresh=False) as live:
        while (data.get("state") or {}).get("phase") not in FINAL:
            time.sleep(interval)
            data = _status(ctx, mesh, name)
            live.update(view(data), refresh=True)


def _command(action: str, help_text: str) -> click.Command:
    @click.command(name=action, help=help_text)
    @click.argument("name")
    @MESH
    @click.pass_context
    def run(ctx: click.Context, name: str, mesh: str) -> None:
        with _client(ctx) as c:
            out = c.request("POST", f"/api/v1/meshes/{mesh}/rollouts/{name}/{action}")
        echo(f"{action} sent to rollout {name} (command {out['queued']['id']}; it was {out.get('phase') or 'starting'});"
             f" follow it with `meshline rollout status -w {name}`")

    return run


rollout.add_command(_command("promote", "End the current step now (a manual gate, a pause, an inconclusive step)."))
rollout.add_command(_command("pause", "Hold the weights where they are; analysis stops until resume."))
rollout.add_command(_command("resume", "Continue a paused rollout (a failed webhook is called again)."))
rollout.add_command(_command("abort", "Send every request back to the stable version and end the rollout."))
