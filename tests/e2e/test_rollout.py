"""Rollouts end to end: a real control plane, real agents and Envoys, real servers, steady load.

One mesh for the module: web (no app; the test calls its outbound port) and orders v1. Each
test applies a Rollout that waits for its candidate, starts orders v2 (healthy, failing,
slow...) behind a fresh sidecar, and watches what happens to requests while the controller
moves the weights; the candidate is stopped and the Rollout deleted again at the end.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from click.testing import CliRunner

from meshline.cli.main import cli
from meshline.core.errors import MeshlineError
from meshline.rollouts.controller import TICK
from meshline.telemetry.envoy_config import FLUSH_INTERVAL_MS
from meshline.testing.mesh import MeshHarness, Sidecar, wait_until
from meshline.testing.servers import Behaviour, HttpTestServer
from tests.browser.test_overview_cdp import Browser, chromium_binary

pytestmark = pytest.mark.e2e

FAST: dict[str, Any] = {"extra_args": ["--drain-seconds", "0"]}
TESTER = {"x-canary": "me"}
RATE = 60.0  # requests per second at most (the load sleeps 1/RATE after each answer)


@dataclass
class Shot:
    at: float
    status: int
    instance: str
    marked: bool


@dataclass
class Load:
    """Steady, bounded load through web's sidecar to orders; every answer kept."""

    url: str
    rate: float = RATE
    mark_every: int = 0  # every n-th request carries the A/B header
    limit: int = 20_000
    shots: list[Shot] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        with httpx.Client(timeout=5) as c:
            n = 0
            while not self._stop.is_set() and n < self.limit:
                n += 1
                marked = bool(self.mark_every) and n % self.mark_every == 0
                at = time.time()
                try:
                    resp = c.get(self.url + "/", headers={"x-beta": "1"} if marked else {})
                    instance = resp.headers.get("x-instance", "")
                    self.shots.append(Shot(at, resp.status_code, instance, marked))
                except httpx.HTTPError:
                    self.shots.append(Shot(at, 0, "", marked))
                self._stop.wait(1 / self.rate)

    def __enter__(self) -> Load:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)


@dataclass
class World:
    mesh: MeshHarness
    web: Sidecar
    stable: HttpTestServer


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with ExitStack() as stack:
        stable = stack.enter_context(HttpTestServer("orders-v1"))
        mesh = MeshHarness(Path(tmp_path_factory.mktemp("rollout")))
        mesh.start()
        stack.callback(mesh.stop)
        mesh.sidecar("orders", stable.port, tags={"version": "v1"}, **FAST)
        web = mesh.sidecar("web", 1, upstreams=["orders"], **FAST)
        wait_until(lambda: httpx.get(web.url("orders") + "/", timeout=5).status_code == 200, 20, what="orders v1")
        yield World(mesh, web, stable)


def rollout_doc(strategy: dict[str, Any], analysis: dict[str, Any], **extra: Any) -> str:
    spec = {"service": "orders", "stable": {"version": "v1"}, "candidate": {"version": "v2"},
            "waitForCandidate": True, "testers": {"name": "x-canary", "value": "me"},
            "strategy": strategy, "analysis": analysis, **extra}  # fmt: skip
    return yaml.safe_dump({"kind": "Rollout", "mesh": "default", "name": "orders", "spec": spec})


def status(w: World) -> dict[str, Any]:
    return dict(w.mesh.api.get("/api/v1/meshes/default/rollouts/orders/status"))


def state(w: World) -> dict[str, Any]:
    return status(w).get("state") or {}


def wait_phase(w: World, *phases: str, timeout: float = 40) -> dict[str, Any]:
    return wait_until(lambda: (s := state(w)).get("phase") in phases and s, timeout, 0.1,
                      what=f"the rollout to be {'/'.join(phases)} (last: {state(w).get('phase')})")


def route(w: World) -> dict[str, Any]:
    return dict(w.mesh.api.get("/api/v1/meshes/default/httproutes/rollout-orders")["spec"])


@contextmanager
def release(w: World, doc: str, candidate: Behaviour) -> Iterator[HttpTestServer]:
    """Apply the Rollout (it waits), make sure web routes by it, then start the candidate."""
    w.mesh.apply(doc)
    try:
        wait_phase(w, "waiting", timeout=10)
        wait_until(lambda: "rollout-orders" in w.web.admin("/config_dump").text, 15, what="the rollout's route")
        with HttpTestServer("orders-v2", behaviour=candidate) as server:
            sc = w.mesh.sidecar("orders", server.port, tags={"version": "v2"}, name="orders-v2", **FAST)
            try:
                yield server
            finally:
                sc.stop()
                w.mesh.sidecars.remove(sc)
    finally:
        w.mesh.api.request("DELETE", "/api/v1/meshes/default/rollouts/orders")
        wait_until(lambda: "rollout-orders" not in w.web.admin("/config_dump").text, 15, what="the route gone")


def assert_phase(final: dict[str, Any], phase: str) -> None:
    assert final["phase"] == phase, (final["phase"], final["reason"], final["history"][-6:])


def events(s: dict[str, Any]) -> list[str]:
    return [h["event"] for h in s["history"]]


def landed(shots: list[Shot]) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in shots:
        out[s.instance] = out.get(s.instance, 0) + 1
    return out


def step_times(s: dict[str, Any]) -> list[tuple[float, str]]:
    return [(h["at"], h["detail"]) for h in s["history"] if h["event"] == "step"]


# windows long enough for minRequests at ~45 requests/s of load (RATE is its upper bound)
CHECKS = [{"metric": "successRate", "min": 99, "window": "5s"}, {"metric": "p99", "maxMs": 150, "window": "5s"}]


def test_a_healthy_candidate_goes_0_10_50_100_and_is_promoted(world: World) -> None:
    doc = rollout_doc({"canary": {"steps": [{"weight": 10, "pause": "3s"}, {"weight": 50, "pause": "3s"}]}},
                      {"interval": "1s", "minRequests": 8, "checks": CHECKS})
    with release(world, doc, Behaviour()), Load(world.web.url("orders")) as load:
        # a tester reaches the candidate before any user traffic goes there
        wait_until(lambda: httpx.get(world.web.url("orders") + "/", headers=TESTER).headers.get("x-instance")
                   == "orders-v2", 20, what="the tester pinned to v2")  # fmt: skip
        mid = wait_until(lambda: (s := state(world)).get("stage") == 1 and s.get("entered") and s, 30, what="50%")
        # inspect names the rollout's route as what shapes web's calls to orders
        inspected = world.mesh.api.get(f"/api/v1/meshes/default/dataplanes/{world.web.name}/inspect",
                                       params={"config": "0"})  # fmt: skip
        assert "rollout-orders" in {p["name"] for p in inspected["policies"] if p["kind"] == "HTTPRoute"}
        listed = CliRunner().invoke(cli, ["--api", world.mesh.api_url, "get", "rollouts"]).output
        assert "orders" in listed and "canary 10,50" in listed, listed
        assert mid["weights"]["candidate"] == 50
        final = wait_phase(world, "promoted", "rolledBack", "paused")
        assert_phase(final, "promoted")
        assert route(world)["rules"][-1]["backends"] == [{"tags": {"version": "v2"}, "weight": 1}]
        after = time.time() + 1.0  # once web's Envoy has the last route
        wait_until(lambda: len([s for s in load.shots if s.at > after]) >= 30, 15, what="30 requests after promotion")
    assert [d for _, d in step_times(final)] == ["10%", "50%"]
    assert events(final).count("analysis passed") >= 2 and "analysis failed" not in events(final)
    # where ordinary requests landed in each step (from the step's start + 1 s for the push)
    (t10, _), (t50, _) = step_times(final)
    t100 = next(h["at"] for h in final["history"] if h["event"] == "promoted")
    share = {}
    for name, lo, hi in (("10", t10 + 1, t50), ("50", t50 + 1, t100)):
        got = landed([s for s in load.shots if lo < s.at < hi])
        share[name] = got.get("orders-v2", 0) / max(1, sum(got.values()))
    assert 0.0 < share["10"] < 0.3 and 0.3 < share["50"] < 0.7, share
    assert landed([s for s in load.shots if s.at > after]) == {"orders-v2": len([s for s in load.shots if s.at > after])}
    bad = [s for s in load.shots if s.status != 200]
    assert not bad, (bad[:5], step_times(final))


def test_a_candidate_failing_10_percent_is_rolled_back_at_the_first_conclusive_analysis(world: World) -> None:
    min_requests, interval, weight, fail = 20, 1.0, 10, 0.10
    doc = rollout_doc({"canary": {"steps": [{"weight": weight, "pause": "10s"}, {"weight": 50, "pause": "10s"}]}},
                      {"interval": f"{interval:g}s", "minRequests": min_requests, "inconclusiveLimit": 10,
                       "checks": [{"metric": "successRate", "min": 99, "window": "10s"}]})  # fmt: skip
    with release(world, doc, Behaviour(fail_ratio=fail)) as candidate, Load(world.web.url("orders")) as load:
        final = wait_phase(world, "rolledBack", "promoted", "paused")
        after = time.time() + 1.0
        wait_until(lambda: len([s for s in load.shots if s.at > after]) >= 30, 15, what="30 requests after rollback")
        final_route = route(world)
    assert_phase(final, "rolledBack")
    analyses = [e for e in events(final) if e.startswith("analysis")]
    assert "analysis passed" not in analyses and "analysis failed" not in analyses  # first conclusive one rolled back
    assert final["checks"][0]["verdict"] == "fail" and final["checks"][0]["candidateRequests"] >= min_requests
    # The bound: the candidate gets weight% of RATE; the first analysis with minRequests in its
    # window rolls back. Until then at most minRequests were counted, plus what arrived while the
    # entries were on their way (access-log flush + the partial second of the window's buckets),
    # one analysis interval and controller tick, and the route push (0.5 s). 3 sigma of slack for
    # Envoy's weighted random choice and the server's random failures.
    lag = FLUSH_INTERVAL_MS / 1000 + 1.0 + interval + TICK + 0.5
    expected = min_requests + RATE * weight / 100 * lag
    to_candidate = expected + 3 * math.sqrt(expected)
    failed_bound = fail * to_candidate + 3 * math.sqrt(to_candidate * fail * (1 - fail))
    failed = [s for s in load.shots if s.status >= 500]
    assert candidate.count() <= to_candidate, (candidate.count(), to_candidate)
    assert len(failed) <= failed_bound, (len(failed), failed_bound)
    assert all(s.instance == "orders-v2" for s in failed)  # every failure was the candidate's
    late = [s for s in load.shots if s.at > after]
    assert landed(late) == {"orders-v1": len(late)}  # rolled back to 0%
    assert [r["backends"] for r in final_route["rules"]] == [[{"tags": {"version": "v1"}, "weight": 1}]]


def test_a_candidate_300ms_slower_is_rolled_back_on_latency_with_success_fine(world: World) -> None:
    doc = rollout_doc({"canary": {"steps": [{"weight": 50, "pause": "10s"}]}},
                      {"interval": "1s", "minRequests": 5, "inconclusiveLimit": 10, "checks": CHECKS})
    with release(world, doc, Behaviour(delay=0.3)), Load(world.web.url("orders")):
        final = wait_phase(world, "rolledBack", "promoted", "paused")
    assert_phase(final, "rolledBack")
    verdicts = {c["metric"]: c for c in final["checks"]}
    assert verdicts["successRate"]["verdict"] == "pass" and verdicts["successRate"]["candidate"] == 100
    assert verdicts["p99"]["verdict"] == "fail" and verdicts["p99"]["candidate"] >= 300
    assert verdicts["p99"]["stable"] is not None and verdicts["p99"]["stable"] < 150


def test_too_little_traffic_pauses_as_inconclusive_instead_of_promoting(world: World) -> None:
    doc = rollout_doc({"canary": {"steps": [{"weight": 10, "pause": "1s"}]}},
                      {"interval": "1s", "minRequests": 200, "inconclusiveLimit": 3, "checks": CHECKS})
    with release(world, doc, Behaviour()), Load(world.web.url("orders"), rate=10):
        final = wait_phase(world, "paused", "promoted", "rolledBack")
        assert final["phase"] == "paused" and "inconclusive 3x" in final["reason"], final
        assert final["weights"]["candidate"] == 10  # held where it was, not promoted
        assert all(c["verdict"] == "inconclusive" for c in final["checks"])


def test_a_failing_webhook_stops_the_step_and_a_manual_gate_waits_for_promote(world: World) -> None:
    with HttpTestServer("hook", behaviour=Behaviour(status=500)) as hook:
        doc = rollout_doc({"canary": {"steps": [{"weight": 10}, {"manualGate": True}, {"weight": 100}]}},
                          {"interval": "1s"},
                          webhooks=[{"name": "smoke", "at": "preStep", "url": f"http://127.0.0.1:{hook.port}/smoke"}])
        with release(world, doc, Behaviour()), Load(world.web.url("orders")) as load:
            paused = wait_phase(world, "paused", "promoted")
            assert "smoke" in paused["reason"] and "500" in paused["reason"]
            assert paused["weights"]["candidate"] == 0 and hook.requests[0]["path"] == "/smoke"
            since = time.time() + 1
            wait_until(lambda: len([s for s in load.shots if s.at > since]) >= 30, 15, what="load while paused")
            # a tester already reaches the candidate, while no ordinary request does: the step did not start
            wait_until(lambda: httpx.get(world.web.url("orders") + "/", headers=TESTER).headers.get("x-instance")
                       == "orders-v2", 10, what="the tester pinned to v2")  # fmt: skip
            assert "orders-v2" not in landed([s for s in load.shots if s.at > since])
            hook.behaviour = Behaviour()
            run = CliRunner().invoke(cli, ["--api", world.mesh.api_url, "rollout", "resume", "orders"])
            assert run.exit_code == 0, run.output
            at_gate = wait_until(lambda: (s := state(world)).get("stage") == 1 and s.get("entered") and s, 20,
                                 what="the manual gate")  # fmt: skip
            assert at_gate["weights"]["candidate"] == 10
            # it stays at the gate: the state is the same after several analysis intervals
            deadline = time.time() + 3
            while time.time() < deadline:
                assert state(world)["stage"] == 1 and state(world)["phase"] == "progressing"
                time.sleep(0.25)
            shown = CliRunner().invoke(cli, ["--api", world.mesh.api_url, "rollout", "status", "orders"])
            assert "manual gate" in shown.output and "progressing" in shown.output, shown.output
            watching: list[Any] = []  # the live view, in a thread: it ends by itself with the rollout
            watcher = threading.Thread(target=lambda: watching.append(CliRunner().invoke(
                cli, ["--api", world.mesh.api_url, "rollout", "status", "-w", "orders"])))
            watcher.start()
            run = CliRunner().invoke(cli, ["--api", world.mesh.api_url, "rollout", "promote", "orders"])
            assert run.exit_code == 0, run.output
            assert wait_phase(world, "promoted")["weights"]["candidate"] == 100
            watcher.join(15)
            assert watching and watching[0].exit_code == 0 and "promoted" in watching[0].output


def test_a_restarted_control_plane_continues_at_the_same_step(world: World) -> None:
    # inconclusiveLimit 10: the sidecars' access-log streams reconnect after the restart, a gap
    # in the signals the first analyses after it see as inconclusive
    doc = rollout_doc({"canary": {"steps": [{"weight": 20, "pause": "8s"}, {"weight": 60, "pause": "2s"}]}},
                      {"interval": "1s", "minRequests": 5, "inconclusiveLimit": 10,
                       "checks": [{"metric": "successRate", "min": 99, "window": "2s"}]})  # fmt: skip
    with release(world, doc, Behaviour()), Load(world.web.url("orders")):
        before = wait_until(lambda: (s := state(world)).get("entered") and s.get("stage") == 0 and s, 20,
                            what="the first step")  # fmt: skip
        spec_before = route(world)
        world.mesh.restart_control_plane()
        right_after = state(world)
        assert right_after["stage"] == 0 and right_after["weights"] == before["weights"]
        assert right_after["stageStarted"] == before["stageStarted"]  # the same step, not a new one
        assert route(world) == spec_before  # no weight jump: the same route
        final = wait_phase(world, "promoted", "rolledBack", "paused")
    assert_phase(final, "promoted")
    assert [d for _, d in step_times(final)] == ["20%", "60%"]  # each step once, in order
    assert events(final).count("candidate ready") == 1 and events(final).count("step") == 2


def test_ab_by_header_sends_only_marked_requests_to_the_candidate(world: World) -> None:
    doc = rollout_doc({"abTest": {"header": {"name": "x-beta", "value": "1"}, "duration": "4s"}},
                      {"interval": "1s", "minRequests": 5,
                       "checks": [{"metric": "successRate", "min": 99, "window": "2s"}]})  # fmt: skip
    with release(world, doc, Behaviour()), Load(world.web.url("orders"), mark_every=4) as load:
        final = wait_phase(world, "promoted", "rolledBack", "paused")
    assert_phase(final, "promoted")
    (t_ab, what), = step_times(final)
    assert what.startswith("A/B")
    t_end = next(h["at"] for h in final["history"] if h["event"] == "promoted")
    during = [s for s in load.shots if t_ab + 1 < s.at < t_end]
    assert len(during) > 40
    assert landed([s for s in during if s.marked]) == {"orders-v2": len([s for s in during if s.marked])}
    assert landed([s for s in during if not s.marked]) == {"orders-v1": len([s for s in during if not s.marked])}
    assert events(final).count("analysis passed") >= 1


def _refused(w: World, doc: str) -> str:
    with pytest.raises(MeshlineError) as err:
        w.mesh.apply(doc)
    return str(err.value)


def test_bad_rollouts_are_refused_at_apply_with_the_field_and_a_fix(world: World) -> None:
    canary = {"canary": {"steps": [{"weight": 10}]}}
    checks = {"checks": CHECKS}

    def doc(**spec: Any) -> str:
        body = yaml.safe_load(rollout_doc(canary, checks))
        body["spec"].pop("waitForCandidate")
        body["spec"].update(spec)
        return yaml.safe_dump(body)

    assert "spec.service: service 'ordres' has no instances in mesh default; did you mean 'orders'?" in _refused(
        world, doc(service="ordres"))
    assert "spec.stable.version: no instance of 'orders' has version 'v0'; its versions: v1" in _refused(
        world, doc(stable={"version": "v0"}))
    assert "spec.candidate.version" in (msg := _refused(world, doc())) and "waitForCandidate: true" in msg
    assert "spec.strategy.canary.steps[1].weight: 5 does not increase" in _refused(
        world, doc(waitForCandidate=True, strategy={"canary": {"steps": [{"weight": 10}, {"weight": 5}]}}))
    assert "spec.analysis.checks[0].min: 101% can never be met" in _refused(
        world, doc(waitForCandidate=True, analysis={"checks": [{"metric": "successRate", "min": 101, "window": "5s"}]}))
    assert "shorter than the telemetry's resolution" in _refused(
        world, doc(waitForCandidate=True, analysis={"checks": [{"metric": "p99", "maxMs": 9, "window": "200ms"}]}))
    assert world.mesh.api.get("/api/v1/meshes/default/rollouts")["items"] == []  # nothing was stored
    # a user route for the service and a rollout would fight: refused either way round
    user_route = yaml.safe_dump({"kind": "HTTPRoute", "mesh": "default", "name": "orders-split", "spec": {
        "destinations": [{"match": {"service": "orders"}}], "rules": [{"backends": [{"tags": {"version": "v1"}}]}]}})
    world.mesh.apply(user_route)
    try:
        assert "HTTPRoute orders-split routes 'orders' and would fight" in _refused(world, doc(waitForCandidate=True))
    finally:
        world.mesh.api.request("DELETE", "/api/v1/meshes/default/httproutes/orders-split")
    world.mesh.apply(doc(waitForCandidate=True))
    try:
        assert "spec.destinations[0]: Rollout orders owns the routing of 'orders'" in _refused(world, user_route)
        second = doc(waitForCandidate=True).replace("name: orders\n", "name: orders-again\n")
        assert "Rollout orders already releases 'orders'; one rollout per service" in _refused(world, second)
    finally:
        world.mesh.api.request("DELETE", "/api/v1/meshes/default/rollouts/orders")


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Browser]:
    b = Browser(chromium_binary(), tmp_path / "chromium-profile")
    await b.start()
    try:
        yield b
    finally:
        await b.stop()


async def test_the_dashboard_shows_the_timeline_checks_and_both_versions_and_abort_ends_it(
        world: World, browser: Browser) -> None:  # fmt: skip
    doc = rollout_doc({"canary": {"steps": [{"weight": 30, "pause": "1s"}, {"manualGate": True}]}},
                      {"interval": "1s", "minRequests": 5, "checks": CHECKS})
    with release(world, doc, Behaviour()), Load(world.web.url("orders")) as load:
        wait_until(lambda: (s := state(world)).get("stage") == 1 and s.get("entered"), 30, what="the gate")
        await browser.goto(f"{world.mesh.api_url}/#rollouts")
        box = "document.querySelector('[data-rollout=\"orders\"]')"
        await browser.wait_for(f"{box} && {box}.querySelector('.timeline li.current')?.textContent === '30% + manual gate'",
                               what="the current step in the timeline")
        shown = await browser.evaluate(f"""({{
            phase: {box}.querySelector('.phase').dataset.phase,
            weights: {box}.querySelector('.weights').textContent,
            done: [...{box}.querySelectorAll('.timeline li.done')].map(li => li.textContent),
            checks: [...{box}.querySelectorAll('table')[0].querySelectorAll('tbody tr')].map(
                r => [...r.children].map(c => c.textContent)),
            versions: [...{box}.querySelectorAll('table')[1].querySelectorAll('tbody tr')].map(
                r => [...r.children].map(c => c.textContent)),
        }})""")
        assert shown["phase"] == "progressing"
        assert "stable 70% · candidate 30%" in shown["weights"] and "testers pinned" in shown["weights"]
        assert shown["done"] == ["30%"]
        assert [row[0] for row in shown["checks"]] == ["successRate", "p99"] and {r[-1] for r in shown["checks"]} == {
            "pass"}
        stable, candidate = shown["versions"]
        assert stable[0] == "stable (v1)" and candidate[0] == "candidate (v2)" and int(candidate[1]) > 0
        run = CliRunner().invoke(cli, ["--api", world.mesh.api_url, "rollout", "abort", "orders"])
        assert run.exit_code == 0, run.output
        await browser.wait_for(f"{box}.querySelector('.phase').dataset.phase === 'aborted'", what="aborted shown")
        after = time.time() + 1.0
        wait_until(lambda: len([s for s in load.shots if s.at > after]) >= 20, 15, what="requests after abort")
    late = [s for s in load.shots if s.at > after]
    assert landed(late) == {"orders-v1": len(late)}
    assert browser.errors == []


BLUE_GREEN = {"blueGreen": {"mirrorPercent": 100, "mirrorFor": "3s"}}
MIRROR_CHECKS = {"interval": "1s", "minRequests": 10, "inconclusiveLimit": 10,
                 "checks": [{"metric": "successRate", "min": 99, "window": "2s"}]}  # fmt: skip


def test_blue_green_mirrors_a_failing_candidate_and_rolls_it_back_without_one_user_failure(world: World) -> None:
    with release(world, rollout_doc(BLUE_GREEN, MIRROR_CHECKS), Behaviour(fail_ratio=0.3)) as candidate, \
            Load(world.web.url("orders")) as load:
        final = wait_phase(world, "rolledBack", "promoted", "paused")
    assert_phase(final, "rolledBack")
    assert final["checks"][0]["verdict"] == "fail" and final["checks"][0]["candidate"] < 90
    assert candidate.count() >= 10  # the mirrored copies reached it...
    assert landed(load.shots) == {"orders-v1": len(load.shots)}  # ...but every answer came from v1
    assert all(s.status == 200 for s in load.shots)


def test_blue_green_switches_a_healthy_candidate_at_once_after_the_mirror_phase(world: World) -> None:
    with release(world, rollout_doc(BLUE_GREEN, MIRROR_CHECKS), Behaviour()), Load(world.web.url("orders")) as load:
        final = wait_phase(world, "promoted", "rolledBack", "paused")
        after = time.time() + 1.0
        wait_until(lambda: len([s for s in load.shots if s.at > after]) >= 20, 15, what="requests after the switch")
    assert_phase(final, "promoted")
    (t_mirror, what), = step_times(final)
    assert what == "mirror 100%"
    before = [s for s in load.shots if s.at < next(h["at"] for h in final["history"] if h["event"] == "promoted")]
    assert landed(before) == {"orders-v1": len(before)}  # 0% until the switch (copies are not answers)
    late = [s for s in load.shots if s.at > after]
    assert landed(late) == {"orders-v2": len(late)}
