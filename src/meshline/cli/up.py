"""`meshline up`: control plane + meshed demo, with progress and a summary of what to try."""

from __future__ import annotations

import asyncio
import logging
import sys
from contextlib import ExitStack
from pathlib import Path

import click

from meshline.cli.controlplane import remember
from meshline.cli.on_path import meshline_command
from meshline.cli.output import console, err_console
from meshline.controlplane.settings import Settings, default_data_dir
from meshline.demo.up import Demo, demo_services, run_up
from meshline.server.controlplane import ControlPlane


def _summary(cp: ControlPlane, demo: Demo, first: dict[str, object], seconds: float,
             context: str | None = None) -> None:
    web = f"http://127.0.0.1:{demo.web_port}"
    mesh = cp.ctx.model.mesh("default")
    mode = mesh.spec.mtls.mode if mesh is not None else "strict"  # type: ignore[attr-defined]
    console.print(f"\n[bold green]Meshline is up[/bold green] in {seconds:.1f}s: control plane + 4 meshed services and a gateway,"
                  f" mTLS {mode}.\n")
    rows = [(s.name, s.role, s.version, f"127.0.0.1:{s.app_port}",
             f"{s.upstream[0]} at 127.0.0.1:{s.upstream[1]}" if s.upstream else "-")
            for s in demo_services(demo.web_port, demo.outbound_base) if s.role != "gateway"]
    rows.append(("edge-1", "edge (gateway)", "-", f"127.0.0.1:{demo.web_port} (entry)", "web, over mTLS"))
    from meshline.cli.output import table

    table(["DATAPLANE", "SERVICE", "VERSION", "APP", "CALLS"], rows)
    ml, note = meshline_command()
    console.print(f"""
  Send a request:       curl {web}/          (gateway edge -> web -> orders -> inventory, over mTLS)
  Dashboard:            {cp.api_url}/    (signed in: {ml} dashboard --open)
  Control plane API:    {cp.api_url}    (OpenAPI: {cp.api_url}/openapi.json)
  Dataplanes:           {ml} get dataplanes
  One of them:          {ml} inspect dataplane web-1
  CLI context:          {context or "-"}    ({ml} context list)
  Logs:                 {demo.logs}

  Try a canary rollout of orders v2 (docs/rollouts.md), a retry policy (docs/policies/resilience.md),
  or `{ml} tap orders` while you curl. Ctrl-C stops everything.
""" + (f"\n  Note: {note}\n" if note else ""), soft_wrap=True)
    sys.stdout.flush()


@click.command()
@click.option("--port", "web_port", default=8080, show_default=True,
              help="port of the demo's ingress gateway (the apps take the next 4 ports)")
@click.option("--outbound-base", default=15001, show_default=True,
              help="first local port the demo apps call their upstreams on (3 ports)")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, envvar="MESHLINE_DATA_DIR",
              help="control-plane data (store, CA, tokens) [default: ~/.meshline]")
@click.option("--api-address", default="127.0.0.1:15681", show_default=True, envvar="MESHLINE_API_ADDRESS")
@click.option("--xds-address", default="127.0.0.1:15678", show_default=True, envvar="MESHLINE_XDS_ADDRESS")
@click.option("--broken-v2", is_flag=True,
              help="make orders v2 a bad release (30% of requests fail, +150 ms) for a rollout to roll back")
def up(web_port: int, outbound_base: int, data_dir: Path | None, api_address: str, xds_address: str,
       broken_v2: bool) -> None:
    """Run a control plane on its embedded store and a meshed demo (web -> orders v1/v2 -> inventory)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    settings = Settings(data_dir=data_dir or default_data_dir(), api_address=api_address,
                        xds_address=xds_address)
    from meshline.server.factory import build_control_plane, demo_token

    with ExitStack() as stack:
        spinner = stack.enter_context(err_console.status("Starting")) if sys.stderr.isatty() else None

        def status(msg: str) -> None:
            if spinner is not None:
                spinner.update(msg + " ...")
            else:
                err_console.print(msg + " ...")

        def ready(cp: ControlPlane, demo: Demo, first: dict[str, object], seconds: float) -> None:
            if spinner is not None:
                spinner.stop()
            _summary(cp, demo, first, seconds, remember(cp))

        asyncio.run(run_up(settings, web_port, outbound_base, build_control_plane, console.print, status,
                           token_for=demo_token, ready=ready, broken_v2=broken_v2))
    console.print("Stopped.")
