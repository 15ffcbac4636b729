"""`meshline drain NAME`: take one instance out of every caller's load balancing and wait until
their sidecars have ACKed it, leaving its agent, Envoy and app running (for maintenance, or
before stopping it by other means). The agent's own graceful stop does the same on SIGTERM.

It marks the Dataplane not ready rather than deleting it: a running agent registers a deleted
Dataplane again (agent.Agent._stay_registered), but leaves a not-ready one alone until it restarts."""

from __future__ import annotations

import asyncio
from typing import Any

import click

from meshline.agent.removal import RemovalResult, wait_removed
from meshline.api.client import ApiClient
from meshline.api.common import resource_path
from meshline.cli.output import echo
from meshline.cli.resources import client_from
from meshline.core.errors import MeshlineError


def _instance(doc: dict[str, Any]) -> tuple[str, str, int]:
    """(service, address, port) callers send this Dataplane's traffic to."""
    spec = doc.get("spec", {})
    inbound = (spec.get("inbound") or [{}])[0]
    service = inbound.get("tags", {}).get("service")
    if not service or "port" not in inbound or not spec.get("address"):
        raise MeshlineError(f"dataplane {doc.get('name')} has no inbound with a service; nothing calls it to drain")
    return str(service), str(spec["address"]), int(inbound["port"])


def drain_instance(c: ApiClient, mesh: str, name: str, timeout: float) -> RemovalResult:
    path = resource_path("Dataplane", mesh, name)
    doc = dict(c.get(path))
    service, address, port = _instance(doc)
    if doc["spec"].get("ready", True):
        c.put({"kind": "Dataplane", "mesh": mesh, "name": name, "spec": {**doc["spec"], "ready": False}})
    query = {"service": service, "address": address, "port": str(port)}

    async def ask() -> Any:
        return await asyncio.to_thread(c.get, f"{path}/removal", params=query)

    return asyncio.run(wait_removed(ask, timeout))


@click.command()
@click.argument("name")
@click.option("--mesh", default="default", show_default=True)
@click.option("--timeout", default=30.0, show_default=True, type=click.FloatRange(min=0),
              help="give up waiting for the callers' ACKs after this many seconds")
@click.pass_context
def drain(ctx: click.Context, name: str, mesh: str, timeout: float) -> None:
    """Take dataplane NAME out of its callers' load balancing and wait until they ACKed it.

    Its agent, Envoy and app keep running; restart the agent to put it back in service."""
    with client_from(ctx) as c:
        result = drain_instance(c, mesh, name, timeout)
    if not result.done:
        raise MeshlineError(result.summary() + " (`meshline inspect dataplane NAME` shows more)")
    echo(f"drained {name}: {result.summary()}")
