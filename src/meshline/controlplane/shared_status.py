"""Dataplane status as data: written to the store by the replica that observes it, read by all.

A sidecar's ADS stream lives on one replica, its certificate may be signed by another, and
``meshline get dataplanes`` may ask a third. So what a replica observes goes to the store
(:meth:`~meshline.store.base.Store.put_status`), in parts each owned by one writer:

* ``xds``: the replica holding the stream writes the whole
  :class:`~meshline.xds.status.DataplaneStatus` record plus its own replica id;
* ``certificate``: the replica that signed the dataplane's certificate writes it.

Writing never slows a push: the ADS server only marks a node changed (a set insert), and
:class:`StatusPublisher` writes every node changed since the last batch in one statement,
:attr:`~meshline.controlplane.settings.Settings.status_flush` seconds after the first change
(coalesced: a node that changed ten times in that window is written once).

Liveness: each replica beats (:meth:`~meshline.store.base.Store.beat`) every
``replica_beat`` seconds and says goodbye when it stops. A stored ``xds`` part that says
"connected" counts only while its replica's last beat is younger than ``replica_ttl``: when a
replica dies, every replica shows its sidecars offline within that time, with no one left to
write it. The replica holding a stream trusts its own memory first (it is never behind).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Mapping
from typing import Any

from meshline.core.errors import MeshlineError
from meshline.core.resource import ResourceKey
from meshline.store.base import Status, Store
from meshline.xds import names
from meshline.xds.status import DataplaneStatus, StatusRegistry

log = logging.getLogger("meshline.status")

XDS_PART = "xds"
CERTIFICATE_PART = "certificate"


def new_replica_id() -> str:
    """Names this process among the replicas: readable (host, pid) and unique across restarts."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"


def dataplane_key(node: str) -> ResourceKey | None:
    try:
        mesh, name = names.parse_node_id(node)
    except ValueError:
        return None
    return ResourceKey("Dataplane", mesh, name)


class StatusPublisher:
    """Writes this replica's observations to the store, batched; beats while it runs."""

    def __init__(
        self, store: Store, registry: StatusRegistry, replica: str, flush_every: float, beat_every: float
    ) -> None:
        self.store = store
        self.registry = registry
        self.replica = replica
        self.flush_every = flush_every
        self.beat_every = beat_every
        self._nodes: set[str] = set()  # nodes whose xDS record changed since the last batch
        self._parts: dict[ResourceKey, Status] = {}  # other parts to write (certificates)
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.batches = 0  # statements written (for tests and benchmarks)
        self._started = False

    async def start(self) -> None:
        self.registry.listeners.append(self._changed)
        self._started = True
        await self._beat_once()  # alive before the first stream can connect
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._flush_loop(), name="status-flush"),
            loop.create_task(self._beat_loop(), name="replica-beat"),
        ]

    async def stop(self) -> None:
        """After the xDS server stopped: write what is left (the streams' ends), say goodbye."""
        if not self._started:
            return
        self._started = False
        with contextlib.suppress(ValueError):
            self.registry.listeners.remove(self._changed)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        try:
            await self.flush()
            await self.store.forget_replica(self.replica)
        except MeshlineError as err:
            log.warning("could not write the last status before stopping: %s", err)

    def _changed(self, node: str) -> None:
        self._nodes.add(node)
        self._wake.set()

    def publish(self, key: ResourceKey, part: str, body: Mapping[str, Any]) -> None:
        """Queue one part of ``key``'s status (e.g. its certificate) for the next batch."""
        self._parts.setdefault(key, {})[part] = dict(body)
        self._wake.set()

    def _batch(self) -> dict[ResourceKey, Status]:
        nodes, self._nodes = self._nodes, set()
        parts, self._parts = self._parts, {}
        for node in nodes:
            key, st = dataplane_key(node), self.registry.find(node)
            if key is not None and st is not None:
                parts.setdefault(key, {})[XDS_PART] = {**st.to_record(), "replica": self.replica}
        return parts

    async def flush(self) -> None:
        parts = self._batch()
        if not parts:
            return
        try:
            await self.store.put_status(parts)
            self.batches += 1
        except MeshlineError:
            for key, body in parts.items():  # keep them for the next try; newer parts win
                self._parts[key] = {**body, **self._parts.get(key, {})}
            self._wake.set()
            raise

    async def _flush_loop(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(self.flush_every)  # what changes meanwhile goes in the same batch
            self._wake.clear()
            try:
                await self.flush()
            except MeshlineError as err:
                log.warning("dataplane status not written (retrying): %s", err)
            except Exception:
                log.exception("dataplane status not written")

    async def _beat_once(self) -> None:
        try:
            await self.store.beat(self.replica)
        except MeshlineError as err:
            log.warning("replica heartbeat not written: %s", err)

    async def _beat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.beat_every)
            await self._beat_once()


def merged_status(
    node: str,
    local: DataplaneStatus | None,
    stored: Status | None,
    ages: Mapping[str, float],
    me: str,
    ttl: float,
    now: float | None = None,
) -> tuple[dict[str, Any], str]:
    """The xDS status to show for ``node``, and the replica its stream is on ("" if none).

    Local memory wins when this replica holds the stream, or when the stored record is this
    replica's own (memory is never behind it). Otherwise the stored record, "connected" only
    while its replica beats. Pure; tested directly."""
    now = time.time() if now is None else now
    rec = dict(stored.get(XDS_PART) or {}) if stored else {}
    writer = str(rec.get("replica", ""))
    if local is not None and (local.connected or not rec or writer == me):
        out = local.to_json()
        out["lastSeen"] = now if local.connected else local.disconnected_at
        return out, me if local.connected else ""
    if not rec:
        return {"node": node, "state": "offline", "connected": False}, ""
    st = DataplaneStatus.from_record({**rec, "node": node})
    age = ages.get(writer)
    alive = age is not None and age < ttl
    if st.connected and not alive:
        st.connected = False
        # the stream was open at the replica's last beat, at least
        st.disconnected_at = now - age if age is not None else st.connected_at
    out = st.to_json()
    out["lastSeen"] = now - (age or 0.0) if st.connected else st.disconnected_at
    return out, writer if st.connected else ""
