"""`meshline control-plane`: run the control plane in the foreground."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

import click

from meshline.api.common import CP_CA_FILE
from meshline.api.contexts import remember_local
from meshline.controlplane.settings import MODES, Settings, default_data_dir
from meshline.core.errors import MeshlineError
from meshline.security.authn import ADMIN_TOKEN_FILE
from meshline.server.controlplane import ControlPlane

log = logging.getLogger("meshline.controlplane")


def remember(cp: ControlPlane) -> str | None:
    """Write (and make current) the CLI context of this control plane for the user running it,
    so `meshline ...` in another terminal talks to it with its admin token."""
    data = cp.settings.data_dir.resolve()
    token = data / ADMIN_TOKEN_FILE
    ca = data / CP_CA_FILE
    try:
        name, path = remember_local(cp.api_url, data, token if cp.settings.auth and token.exists() else None,
                                    ca if ca.exists() else None)  # fmt: skip
    except (OSError, MeshlineError) as err:
        log.warning("could not write the CLI's context for this control plane: %s", err)
        return None
    log.info(
        "the CLI uses this control plane through context '%s' (current; %s): API %s, token %s",
        name, path, cp.api_url, token if cp.settings.auth else "none (auth off)",
    )  # fmt: skip
    return name


async def serve(cp: ControlPlane, ready: asyncio.Event | None = None, write_context: bool = False) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await cp.start()
    if write_context:
        remember(cp)
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        await cp.stop()


@click.command("control-plane")
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=None,
    envvar="MESHLINE_DATA_DIR",
    help="where the embedded store, the CA and tokens live [default: ~/.meshline]",
)
@click.option(
    "--store",
    "store_url",
    default="",
    envvar="MESHLINE_STORE_URL",
    help="sqlite:///path.db (default, in the data dir) or postgresql://user@host/db (HA)",
)
@click.option("--api-address", default="127.0.0.1:15681", envvar="MESHLINE_API_ADDRESS", show_default=True)
@click.option("--xds-address", default="127.0.0.1:15678", envvar="MESHLINE_XDS_ADDRESS", show_default=True)
@click.option("--debounce", default=0.01, show_default=True, help="seconds to batch changes before pushing")
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--mode", type=click.Choice(MODES), default="standalone", envvar="MESHLINE_MODE", show_default=True,
              help="standalone; global (meshes and policies authored here, zones sync with it); zone (serves"
                   " its dataplanes, synced with --global)")
@click.option("--zone", default=None, envvar="MESHLINE_ZONE", help="the zone this control plane serves (--mode zone)")
@click.option("--global", "global_url", default="", envvar="MESHLINE_GLOBAL", metavar="URL",
              help="the global control plane's API, e.g. https://global.example:15681 (--mode zone)")
@click.option("--zone-token-file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              envvar="MESHLINE_ZONE_TOKEN_FILE", help="the zone token issued at global (--mode zone)")
@click.option("--global-ca-file", type=click.Path(path_type=Path, dir_okay=False, exists=True), default=None,
              envvar="MESHLINE_GLOBAL_CA_FILE", help="the CA that verifies global's HTTPS API (its cp-ca.pem)")
def control_plane(
    data_dir: Path | None, store_url: str, api_address: str, xds_address: str, debounce: float, log_level: str,
    mode: str, zone: str | None, global_url: str, zone_token_file: Path | None, global_ca_file: Path | None,
) -> None:
    """Run the control plane: REST API, xDS (ADS) server and CA.

    \b
    Multi-zone (docs/multi-zone.md):
      meshline control-plane --mode global --store postgresql://...
      meshline control-plane --mode zone --zone zone-a --global https://GLOBAL:15681 \\
          --zone-token-file zone-a.token --global-ca-file global-ca.pem
    """
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings(
        data_dir=data_dir or default_data_dir(),
        store_url=store_url,
        api_address=api_address,
        xds_address=xds_address,
        debounce=debounce,
        mode=mode,
        global_url=global_url,
        zone_token_file=zone_token_file,
        global_ca_file=global_ca_file,
        # a zone's meshes come from global; global and standalone start with "default"
        create_default_mesh=mode != "zone",
    )
    if zone:
        settings.zone = zone
    settings.check_mode()
    from meshline.server.factory import build_control_plane

    asyncio.run(serve(build_control_plane(settings), write_context=True))
