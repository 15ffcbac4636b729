"""Registering the workload's Dataplane with the control plane, and removing it again."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from meshline.agent.backoff import Deadline
from meshline.core.errors import MeshlineError, NotFound, Unavailable

if TYPE_CHECKING:
    from meshline.agent.config import AgentConfig

Report = Callable[[str], None]
# How often to repeat "still retrying" while the control plane stays unreachable.
STATUS_EVERY = 5.0


class Api(Protocol):
    """The part of :class:`meshline.api.client.AsyncApiClient` the agent uses."""

    url: str

    async def put(self, doc: dict[str, Any]) -> Any: ...

    async def delete(self, kind: str, mesh: str | None, name: str) -> Any: ...

    async def get(self, kind: str, mesh: str | None, name: str) -> Any: ...


def no_token_message(config: AgentConfig) -> str:
    return (
        f"the control plane at {config.api_url} needs a dataplane token and this agent was given none"
        " (it never uses the host's admin token): issue one with `meshline token issue --kind dataplane"
        f" --mesh {config.mesh} --service {config.service} [--name {config.name}] > {config.service}.token`"
        f" and pass --token-file {config.service}.token (or MESHLINE_TOKEN_FILE / MESHLINE_TOKEN)"
    )


def token_kind(token: str | None) -> str | None:
    """The ``kind`` claim of a Meshline token, read without verifying it (the control plane
    verifies); None for no token or one that does not decode."""
    if not token or token.count(".") != 2:
        return None
    payload = token.split(".")[1]
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, UnicodeDecodeError):
        return None
    kind = claims.get("kind") if isinstance(claims, dict) else None
    return kind if isinstance(kind, str) else None


async def register(
    api: Api,
    doc: dict[str, Any],
    timeout: float,
    report: Report,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> Any:
    """PUT the Dataplane; while the control plane is unreachable retry with backoff for up to
    ``timeout`` seconds. Any other error (invalid spec, bad token, unknown mesh) is final."""
    deadline = Deadline(clock(), timeout)
    last_status = -STATUS_EVERY
    attempts = 0
    while True:
        attempts += 1
        try:
            result = await api.put(doc)
        except Unavailable:
            now = clock()
            delay = deadline.next_delay(now)
            if delay is None:
                raise Unavailable(
                    f"cannot reach the control plane at {api.url} after {timeout:g}s ({attempts} attempts);"
                    " start it with `meshline control-plane` or point --api / MESHLINE_API at it"
                ) from None
            elapsed = deadline.elapsed(now)
            if elapsed - last_status >= STATUS_EVERY or attempts == 1:
                last_status = elapsed
                report(
                    f"control plane at {api.url} is not reachable; retrying"
                    f" ({elapsed:.0f}s of {timeout:g}s)..."
                )
            await sleep(delay)
            continue
        if attempts > 1:
            report(f"control plane at {api.url} reached")
        return result


async def deregister(api: Api, mesh: str, name: str, report: Report, timeout: float = 3.0) -> bool:
    """DELETE the Dataplane so callers drop this workload at once. Best effort: a control
    plane that is down marks the dataplane offline later on its own."""
    try:
        await asyncio.wait_for(api.delete("Dataplane", mesh, name), timeout)
    except NotFound:
        return True
    except TimeoutError:
        report(f"could not deregister dataplane {name}: the control plane did not answer in {timeout:g}s")
        return False
    except MeshlineError as err:
        report(f"could not deregister dataplane {name}: {err}")
        return False
    return True
