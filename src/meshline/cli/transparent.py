"""`meshline transparent-proxy status|uninstall`: the capture rules of this host or network namespace."""

from __future__ import annotations

import json
import time

import click

from meshline.agent.capture import install
from meshline.cli.output import echo


@click.group("transparent-proxy")
def transparent_proxy() -> None:
    """The capture rules `--transparent` agents install here (one set per network namespace)."""


@transparent_proxy.command()
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
def status(output: str) -> None:
    """What is installed in this network namespace, and whether its agent still runs."""
    st = install.status()
    if output == "json":
        echo(json.dumps(st, indent=2))
        return
    if not st["installed"]:
        echo(f"no capture rules in this network namespace (net:[{st['namespace']}])")
        if st.get("ownerPid"):
            echo(f"a state file names agent pid {st['ownerPid']}; `meshline transparent-proxy uninstall` clears it")
        return
    owner = st.get("ownerPid")
    if owner is None:
        echo("capture rules are installed, but no agent's state names them; `uninstall` removes them")
    else:
        alive = "running" if st["ownerAlive"] else "gone: the next agent start or `uninstall` removes them"
        age = time.time() - float(st["installedAt"])
        echo(f"capture rules ({st['backend']}) of agent pid {owner} ({alive}), installed {age:.0f}s ago")
        cfg = st["config"]
        echo(f"  outbound -> :{cfg['outbound_port']}  inbound -> :{cfg['inbound_port']}  DNS -> :{cfg['dns_port']}")
        echo(f"  app user: {cfg['app_uid'] if cfg['app_uid'] is not None else 'any'}  proxy group: {cfg['proxy_gid']}")
        echo(f"  not captured: inbound ports {cfg['exclude_inbound_ports']}, outbound ports"
             f" {cfg['exclude_outbound_ports']}, networks {cfg['exclude_outbound_cidrs']}, users {cfg['exclude_uids']}")
    echo(st["rules"].rstrip())


@transparent_proxy.command()
def uninstall() -> None:
    """Remove Meshline's capture rules from this network namespace (after an agent was killed)."""
    state = install.read_state()
    if state is not None and install._alive(state.owner_pid) and state.owner_pid != 0:
        echo(f"warning: agent pid {state.owner_pid} still runs; its app is no longer captured")
    removed = install.uninstall()
    echo("capture rules removed" if removed else "no capture rules were installed")
