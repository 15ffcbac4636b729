"""The rollout controller: the I/O around :mod:`.machine`.

Every :data:`TICK` seconds, on the one replica that drives rollouts (the live replica with the
smallest id, by the store's beats: every replica computes the same answer without a lock), for
each Rollout it reads the state from the store, the commands users sent, whether the candidate
registered and, when an analysis is due, both versions' golden signals from the telemetry
intake; calls the webhooks the machine asks for; and writes back, in this order:

1. the state (status part ``rollout`` of the Rollout: every replica and the dashboard read it);
2. the generated HTTPRoute, when its weights changed (one resource, one write).

A crash between the two leaves a state one write ahead of the route; the next driver writes
the route of that state. Weights never jump back or skip a step: the route is a function of
the stored state alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import httpx

from meshline.controlplane.context import ControlPlaneContext
from meshline.core.dataplane import DataplaneSpec
from meshline.core.errors import Conflict, NotFound
from meshline.core.ratelog import RateLimitedLog
from meshline.core.resource import Resource, ResourceKey
from meshline.rollouts import machine as m
from meshline.rollouts.api import RolloutSpec, Version
from meshline.rollouts.plan import Stage, stages
from meshline.rollouts.routing import OWNER, route_for

log = logging.getLogger("meshline.rollouts")
TICK = 0.25
STATE_PART = "rollout"  # status part: the machine's state (written by the driving replica)
REQUESTS_PART = "requests"  # status part: commands users sent (written by any replica's API)
MAX_REQUESTS = 20


class SummaryLike(Protocol):
    requests: int
    failures: int
    denied: int
    p50: float | None
    p99: float | None


class VersionSignals(Protocol):
    """What the controller reads from the telemetry intake (meshline.telemetry.intake)."""

    def version_summary(self, mesh: str, service: str, version: str, seconds: int, side: str = "caller") -> Any: ...


def signal_of(s: SummaryLike) -> m.Signal:
    # denials are the mesh's doing, not the version's: neither successes nor failures
    return m.Signal(requests=s.requests - s.denied, failures=s.failures, p50=s.p50, p99=s.p99)


def candidate_ready(resources: Mapping[ResourceKey, Resource], service: str, version: Version,
                    offline: frozenset[str] = frozenset()) -> bool:  # fmt: skip
    want = version.all_tags()
    for r in resources.values():
        if r.kind != "Dataplane" or not isinstance(r.spec, DataplaneSpec) or not r.spec.ready or r.name in offline:
            continue
        if any(i.service == service and all(i.tags.get(k) == v for k, v in want.items()) for i in r.spec.inbound):
            return True
    return False


def status_view(res: Resource, state: m.State, driver: str = "") -> dict[str, Any]:
    """The stored state plus what it means (weights, stages) for readers that do not run the
    machine, and which replica drives it."""
    assert isinstance(res.spec, RolloutSpec)
    plan = stages(res.spec)
    w = m.weights(state, plan)
    return {
        **state.to_json(),
        "driver": driver,
        "candidateVersion": res.spec.candidate.version,
        "stableVersion": res.spec.stable.version,
        "weights": {"stable": 100 - w.candidate, "candidate": w.candidate, "mirror": w.mirror, "ab": w.ab,
                    "testers": w.testers and res.spec.testers is not None},
        "stages": [st.describe() for st in plan],
    }  # fmt: skip


class RolloutController:
    def __init__(self, ctx: ControlPlaneContext, signals: Callable[[], VersionSignals | None],
                 clock: Callable[[], float] = time.time, tick: float = TICK) -> None:  # fmt: skip
        self.ctx = ctx
        self.signals = signals
        self.clock = clock
        self.tick_every = tick
        self._task: asyncio.Task[None] | None = None
        self._http: httpx.AsyncClient | None = None
        self._busy: dict[ResourceKey, asyncio.Task[None]] = {}  # a rollout's tick still running
        self.started = 0.0
        self._log = RateLimitedLog(log)  # a failure that repeats every tick is one line per 10 s

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self.started = self.clock()  # this replica's telemetry starts empty here
        self._http = httpx.AsyncClient(follow_redirects=False, trust_env=False)
        self._task = asyncio.create_task(self._run(), name="rollouts")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._busy.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._task = None
        self._busy.clear()
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def _run(self) -> None:
        while True:
            try:
                if await self.leading():
                    await self.reconcile_all()
            except asyncio.CancelledError:
                raise
            except Exception as err:  # a bad tick must not end the controller; the next one retries
                self._log.warning("tick", "rollout controller tick failed: %s: %s", type(err).__name__, err)
            await asyncio.sleep(self.tick_every)

    async def leading(self) -> bool:
        publisher = self.ctx.publisher
        if publisher is None:
            return True
        ages = await self.ctx.store.replica_ages()
        live = {r for r, age in ages.items() if age < self.ctx.replica_ttl} | {publisher.replica}
        return min(live) == publisher.replica

    # -- one pass -----------------------------------------------------------------------------
    async def reconcile_all(self) -> None:
        for mesh, resources in self.ctx.model.by_mesh():
            rollouts = [r for r in resources.values() if r.kind == "Rollout"]
            owned = {r.labels.get(OWNER): r for r in resources.values() if r.kind == "HTTPRoute" and OWNER in r.labels}
            for name, route in owned.items():  # a deleted rollout takes its route with it
                if name is not None and ResourceKey("Rollout", mesh, name) not in resources:
                    with contextlib.suppress(NotFound, Conflict):
                        await self.ctx.store.delete(route.key, route.version)
            for r in rollouts:
                busy = self._busy.get(r.key)
                if busy is not None and not busy.done():
                    continue  # still waiting for its webhooks: other rollouts go on meanwhile
                self._busy[r.key] = asyncio.create_task(self._reconcile_logged(r, resources))
        for key, task in list(self._busy.items()):
            if task.done():
                del self._busy[key]

    async def _reconcile_logged(self, res: Resource, resources: Mapping[ResourceKey, Resource]) -> None:
        try:
            # read here, after this rollout's previous tick wrote: never a state older than its own
            status = (await self.ctx.store.list_status("Rollout", res.mesh, res.name)).get(res.key, {})
            await self.reconcile(res, status, resources)
        except Exception as err:  # the next tick retries from the stored state (logged once per 10 s)
            self._log.warning(str(res.key), "%s: tick failed: %s: %s", res.key, type(err).__name__, err)
            log.debug("%s: tick failed", res.key, exc_info=True)

    async def reconcile(self, res: Resource, status: Mapping[str, Any], resources: Mapping[ResourceKey, Resource]) -> None:
        spec = res.spec
        assert isinstance(spec, RolloutSpec)
        plan = stages(spec)
        now = self.clock()
        raw = status.get(STATE_PART)
        if raw and raw.get("candidateVersion") not in (None, spec.candidate.version):
            raw = None  # a new candidate: a new release
        ready = candidate_ready(resources, spec.service, spec.candidate, self.ctx.reconciler.offline(res.mesh))
        before = m.State.from_json(raw) if raw else None
        state = before if before is not None else m.start(m.State(), now, ready, spec.wait_for_candidate)
        for req in status.get(REQUESTS_PART, ()):
            if int(req.get("id", 0)) > state.handled and req.get("action") in m.COMMANDS:
                state = m.command(state, req["action"], now, plan)
                state = _handled(state, int(req["id"]))
        configured: set[str] = {w.at for w in spec.webhooks}
        hook = m.pending_webhooks(state, plan, configured)
        if hook is not None:
            state = m.webhooks_answered(state, hook, await self._call_webhooks(res, state, hook), self.clock())
            now = self.clock()
        signals = None
        if m.analysis_due(state, spec.analysis, plan, now):
            signals = self._measure(res.mesh, spec, plan[state.stage], now - max(state.stage_started, self.started))
        state = m.tick(state, spec.analysis, plan, m.Tick(now, ready, signals, self.started), configured)
        me = self.ctx.publisher.replica if self.ctx.publisher is not None else ""
        if state != before or (raw or {}).get("driver") != me:  # a new driver says so at once
            await self.ctx.store.put_status({res.key: {STATE_PART: status_view(res, state, me)}})
        await self._write_route(res, state, plan, resources)

    def _measure(self, mesh: str, spec: RolloutSpec, stage: Stage, age: float) -> list[tuple[m.Signal, m.Signal]] | None:
        """Both versions' signals for each check, over its window, or the step's age if shorter
        (what came before the step's weights applied is another traffic mix)."""
        source = self.signals()
        if source is None:
            return None
        side = "callee" if stage.mirror else "caller"  # mirrored copies are seen by the candidate only
        out = []
        for check in spec.analysis.checks:
            seconds = max(1, min(round(check.window.total_seconds()), math.ceil(age)))
            cand = source.version_summary(mesh, spec.service, spec.candidate.version, seconds, side)
            base = source.version_summary(mesh, spec.service, spec.stable.version, seconds, side)
            out.append((signal_of(cand), signal_of(base)))
        return out

    async def _call_webhooks(self, res: Resource, state: m.State, at: str) -> str | None:
        assert isinstance(res.spec, RolloutSpec) and self._http is not None
        body = {"rollout": res.name, "mesh": res.mesh, "service": res.spec.service, "at": at, "stage": state.stage,
                "stable": res.spec.stable.version, "candidate": res.spec.candidate.version}  # fmt: skip
        for hook in res.spec.webhooks:
            if hook.at != at:
                continue
            try:
                resp = await self._http.post(hook.url, json=body, timeout=hook.timeout.total_seconds())
            except httpx.HTTPError as err:
                return f"{hook.name} ({hook.url}) could not be reached: {type(err).__name__} {err}"
            if not 200 <= resp.status_code < 300:
                return f"{hook.name} ({hook.url}) answered {resp.status_code}"
        return None

    async def _write_route(self, res: Resource, state: m.State, plan: Sequence[Stage],
                           resources: Mapping[ResourceKey, Resource]) -> None:  # fmt: skip
        stamp = dict(self.ctx.store.stamp_labels)
        want = route_for(res, m.weights(state, plan), stamp)
        have = resources.get(want.key)
        if have is not None and have.spec == want.spec and have.labels.get(OWNER) == res.name:
            return
        try:
            await self.ctx.store.put(want, have.version if have is not None else 0)
        except Conflict:  # someone else wrote it meanwhile: the next tick sees theirs and decides again
            log.info("HTTPRoute %s changed while being written; retrying on the next tick", want.name)


def _handled(state: m.State, request_id: int) -> m.State:
    return dataclasses.replace(state, handled=max(state.handled, request_id))
