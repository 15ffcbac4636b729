"""The dataplane agent's lifecycle: register, start local services and Envoy, wait until
Envoy is ready, optionally run the app, supervise, and shut everything down in order.

Lifecycle (``Agent.phase``)::

    STARTING -> REGISTERING -> STARTING_SERVICES -> STARTING_ENVOY -> WAITING_READY -> RUNNING
         \\___________________________ any failure or stop signal ___________________/
                                              v
                                  STOPPING -> STOPPED

Shutdown undoes only what was done, in reverse: deregister, wait (bounded by
``callers_ack_timeout``) until every caller's sidecar has ACKed a config without this
instance, drain Envoy (HTTP/1.1 ``Connection: close`` after the current request, HTTP/2
GOAWAY), only then pass SIGTERM to the app and wait for it, stop Envoy, stop local services
(docs/operations.md has the timeline). An upgrade (SIGUSR2, ``meshline upgrade-sidecar``)
re-executes this process with the new program, which adopts the app and hot restarts Envoy
(agent/handoff.py; ``_upgrade`` here, ``_take_over`` in the new program). The pure
parts (backoff, bootstrap, environment, arguments) live in their own modules; this one
only sequences them.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import fcntl
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from meshline import __version__
from meshline.agent import handoff, process
from meshline.agent.backoff import Backoff
from meshline.agent.bootstrap import build_bootstrap, write_bootstrap
from meshline.agent.config import (
    AgentConfig,
    LocalService,
    app_env,
    check_config,
    dataplane_doc,
    listen_ports,
    port_in_use,
)
from meshline.agent.envoy import Envoy, EnvoyError, ReadyState, diagnose, kill_stale
from meshline.agent.registration import Api, deregister, no_token_message, register, token_kind
from meshline.agent.removal import wait_removed
from meshline.core import versions
from meshline.core.errors import MeshlineError, NotFound, Unauthorized, Unavailable
from meshline.core.unix_sockets import private_dir

if TYPE_CHECKING:
    from meshline.agent.capture.lifecycle import Capture

log = logging.getLogger("meshline.agent")
Report = Callable[[str], None]
T = TypeVar("T")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
UPGRADE_SIGNAL = signal.SIGUSR2
# Blocked from just before an upgrade's exec until the new program handles them: one arriving
# in between waits (pending) instead of killing the process and, with it, the app.
HELD_SIGNALS = (*FORWARDED_SIGNALS, UPGRADE_SIGNAL)
XDS_PROXY = "xds-proxy"  # the LocalService an upgrade starts first (agent/xds_proxy.py)
PROGRESS_AFTER = 1.0  # say what we wait for once Envoy takes longer than this to be ready
PROGRESS_EVERY = 5.0
# How often a running agent checks that its Dataplane still exists (seconds).
REGISTRATION_CHECK_ENV = "MESHLINE_REGISTRATION_CHECK_S"
REGISTRATION_CHECK_S = 15.0


class Phase(enum.Enum):
    STARTING = "starting"
    REGISTERING = "registering"
    STARTING_SERVICES = "starting-services"
    STARTING_ENVOY = "starting-envoy"
    WAITING_READY = "waiting-ready"
    RUNNING = "running"
    HANDING_OVER = "handing-over"  # an upgrade: about to exec the new program
    STOPPING = "stopping"
    STOPPED = "stopped"


class _Stopped(Exception):
    """A stop was requested before startup finished."""


async def app_listening(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def summary_lines(config: AgentConfig) -> list[str]:
    if config.proxy == "gateway":
        ports = ", ".join(f"{config.address}:{p}" for p in config.gateway_ports)
        lines = [f"gateway   {config.service}: entry ports {ports} (listeners from MeshGateway {config.service})"]
        if config.certs_dir is not None:
            lines.append(f"certs     {config.certs_dir}/<certificate>/tls.crt,tls.key (served to Envoy by SDS)")
        return [*lines, f"admin     {config.admin_socket}", f"envoy log {config.envoy_log_path}"]
    protocol = "detected per connection" if config.detect_protocol else config.protocol
    t = config.transparent
    if t is not None:
        lines = [
            f"inbound   {config.address}:{config.app_port} (captured -> :{t.inbound_port}) -> app"
            f" 127.0.0.1:{config.app_port} ({protocol})",
            f"outbound  every connection (captured -> :{t.outbound_port}); mesh names: NAME.mesh"
            + (f", DNS -> 127.0.0.1:{t.dns_port}" if t.dns_port else ""),
        ]
    else:
        lines = [
            f"inbound   {config.address}:{config.inbound_port} -> app {config.app_address}:{config.app_port}"
            f" ({protocol})"
        ]
    for u in config.upstreams:
        lines.append(f"outbound  {u.service} -> 127.0.0.1:{u.port} (${u.env_name})")
    lines.append(f"admin     {config.admin_socket} (curl --unix-socket {config.admin_socket} http://envoy/ready)")
    if config.metrics_port:
        host = f"[{config.address}]" if ":" in config.address else config.address
        lines.append(f"metrics   http://{host}:{config.metrics_port}/metrics")
    lines.append(f"envoy log {config.envoy_log_path}")
    return lines


def progress_message(elapsed: float, state: ReadyState, xds: str) -> str:
    if state.state is None:
        why = "its admin endpoint does not answer yet"
    elif state.xds_connected is False:
        why = f"not connected to the control plane's xDS server at {xds} yet"
    else:
        why = f"waiting for its configuration from {xds} (state {state.state})"
    return f"waiting for Envoy to become ready ({elapsed:.0f}s): {why}"


def not_ready_error(timeout: float, state: ReadyState, config: AgentConfig) -> EnvoyError:
    xds = f"{config.xds_host}:{config.xds_port}"
    if state.state is None:
        why = f"its admin endpoint {config.admin_socket} never answered"
    elif state.xds_connected is False:
        why = f"it cannot reach the control plane's xDS server at {xds} ({config.xds_source}); check it and the network"
    else:
        why = (
            f"it is connected to {xds} but has no complete configuration (state {state.state});"
            f" see `meshline inspect dataplane {config.name} --mesh {config.mesh}`"
        )
    return EnvoyError(f"Envoy was not ready after {timeout:g}s: {why} (log: {config.envoy_log_path})")


class Agent:
    """One dataplane's agent. ``await Agent(config).run()`` returns the process exit code.

    ``command``: the app to run once Envoy is ready (``meshline run``); the agent then
    forwards SIGTERM/SIGINT/SIGHUP to it and exits with its exit code when it ends.
    """

    def __init__(
        self,
        config: AgentConfig,
        *,
        command: Sequence[str] | None = None,
        api: Api | None = None,
        report: Report | None = None,
        environ: dict[str, str] | None = None,
        handle_signals: bool = True,
        takeover: handoff.HandoffState | None = None,
    ) -> None:
        self.config = config
        self.command = list(command) if command else None
        self.report: Report = report or log.info
        self.environ = environ if environ is not None else dict(os.environ)
        self.handle_signals = handle_signals
        self.phase = Phase.STARTING
        self.envoy: Envoy | None = None
        self.app: process.Child | None = None
        self.takeover = takeover  # set in a program an upgrade started (see agent/handoff.py)
        self._upgrading: asyncio.Task[None] | None = None
        self._retiring: asyncio.Task[None] | None = None
        self._replaced: Envoy | None = None  # the Envoy a hot restart replaced, until it exits
        self._handed: dict[str, Any] = {}  # what local services hand the new program (see _pause_for_handover)
        self.ready_once = asyncio.Event()
        self._api = api
        self._own_api = api is None
        self._stop = asyncio.Event()
        self._hurry = asyncio.Event()
        self._stop_requests = 0
        # while handing over: where signals go, for the new program (see _upgrade)
        self._catcher: handoff.SignalCatcher | None = None
        self._stop_signal: int | None = None
        self._app_done_first = False
        self._app_signal_deferred = False
        self._registered = False
        self._started_services: list[LocalService] = []
        self._supervisor: asyncio.Task[None] | None = None
        self._readiness: asyncio.Task[None] | None = None
        self._registration: asyncio.Task[None] | None = None
        self._ready_for_traffic = False
        self.registration_check_every = float(self.environ.get(REGISTRATION_CHECK_ENV, REGISTRATION_CHECK_S))
        self._lock_fd: int | None = None
        self.capture: Capture | None = None
        if config.transparent is not None:
            from meshline.agent.capture.dns_table import DnsTable
            from meshline.agent.capture.lifecycle import Capture, DnsService

            table = next((s.table for s in config.local_services if isinstance(s, DnsService)), DnsTable())
            self.capture = Capture(config, table, self.report)

    # -- control ------------------------------------------------------------------------

    def request_stop(self, signum: int | None = None) -> None:
        """Begin a graceful shutdown (what SIGTERM does). A second request skips the drain
        wait; a third kills the app if it is still running."""
        self._stop_requests += 1
        if self._stop_requests == 1:
            self._stop_signal = signum
            self._stop.set()
            if signum is not None:
                self.report(f"got {signal.Signals(signum).name}; stopping")
        elif self._stop_requests == 2:
            self._hurry.set()
        elif self.app is not None and self.app.returncode is None:
            self.report(f"killing the app (pid {self.app.pid})")
            process.signal_group(self.app, signal.SIGKILL)

    def request_upgrade(self) -> None:
        """Hand this workload over to the newly installed program (what SIGUSR2 does)."""
        if self._upgrading is not None and not self._upgrading.done():
            self.report("an upgrade is already under way")
            return
        if self.phase is not Phase.RUNNING:
            why = f"an upgrade needs a running agent (this one is {self.phase.value})"
            self.report(why)
            handoff.write_status(self.config.work_dir, "failed", why)
            return
        self._upgrading = asyncio.create_task(self._upgrade(), name="upgrade")

    @property
    def _serving(self) -> bool:
        """Whether the workload takes traffic, so a stop must be the graceful one: running, or
        in a program an upgrade started (the app and Envoy serve while it takes over)."""
        if self.phase in (Phase.RUNNING, Phase.HANDING_OVER):
            return True
        return self.takeover is not None and self.phase not in (Phase.STOPPING, Phase.STOPPED)

    def _on_signal(self, signum: int) -> None:
        if signum == UPGRADE_SIGNAL:
            self.request_upgrade()
            return
        if self._catcher is not None:
            # about to exec: the new program acts on it (a stop here would race the exec)
            self._catcher.put([signum])
            self.report(f"got {signal.Signals(signum).name} during the upgrade; the new program handles it")
            return
        if self.app is not None and self.app.returncode is None:
            if signum == signal.SIGTERM and self._stop_requests == 0 and self._serving:
                # Graceful stop: the app keeps serving until callers dropped this instance
                # and Envoy drained; _shutdown passes the signal on then. A second one now.
                self._app_signal_deferred = True
                self.request_stop(signum)
                return
            process.signal_group(self.app, signum)
            if signum == signal.SIGHUP:
                return  # the app's business (e.g. reload); the agent keeps running
        self.request_stop(signum)

    # -- main ---------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        installed: list[int] = []
        if self.handle_signals:
            for sig in HELD_SIGNALS:
                loop.add_signal_handler(sig, self._on_signal, int(sig))
                installed.append(int(sig))
            # held by the program that exec'd this one (an upgrade): delivered now, if any came
            signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD_SIGNALS)
            if self.takeover is not None and self.takeover.signals_fd is not None:
                for signum in handoff.take_signals(self.takeover.signals_fd):
                    loop.call_soon(self._on_signal, signum)
        try:
            try:
                await self._startup()
                await self._serve()
            except _Stopped:
                pass
            finally:
                await self._shutdown()
        finally:
            for signum in installed:
                loop.remove_signal_handler(signum)
        return self.exit_code()

    def exit_code(self) -> int:
        if self.app is not None and self.app.returncode is not None:
            return process.exit_code(self.app.returncode)
        if self.command and self._stop_signal is not None:
            return 128 + self._stop_signal  # interrupted before the app could start
        return 0

    async def _until_stopped(self, aw: Awaitable[T]) -> T:
        """Await ``aw`` unless a stop is requested first (then cancel it and raise _Stopped)."""
        if self._stop.is_set():
            if isinstance(aw, Coroutine):
                aw.close()
            raise _Stopped
        task: asyncio.Future[T] = asyncio.ensure_future(aw)
        stop: asyncio.Future[Any] = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait([task, stop], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        raise _Stopped

    def _make_api(self) -> None:
        if self._api is None:
            from meshline.agent.api import AgentApi

            cfg = self.config
            verify: bool | str = str(cfg.ca_file) if cfg.ca_file else True
            self._api = AgentApi(cfg.api_url, token=cfg.token, timeout=5.0, verify=verify)

    async def _startup(self) -> None:
        if self.takeover is not None:
            await self._take_over(self.takeover)
            return
        cfg = self.config
        check_config(cfg)
        if self.capture is not None:  # every reason the rules could not go in, before anything starts
            self.capture.preflight()
        kind = token_kind(cfg.token)
        if kind not in (None, "dataplane"):
            self.report(f"warning: this agent was given a {kind} token; a sidecar needs only a dataplane token"
                        f" (`meshline token issue --kind dataplane --mesh {cfg.mesh} --service {cfg.service}`)")
        self._prepare_work_dir()
        stale = kill_stale(cfg)
        if stale is not None:
            self.report(f"stopped Envoy (pid {stale}) left running by a previous agent of {cfg.name}")
        self._check_ports()
        binary = process.find_envoy(cfg.envoy_path)
        if self.command:
            process.check_command(self.command, self.environ)

        if self.capture is not None:  # before the agent's first connection (see Capture.install)
            self.capture.install()
        self.phase = Phase.REGISTERING
        self._make_api()
        assert self._api is not None
        try:
            await self._until_stopped(
                register(self._api, dataplane_doc(cfg, ready=False), cfg.register_timeout, self.report)
            )
        except Unauthorized as err:
            raise Unauthorized(no_token_message(cfg) if cfg.token is None else str(err)) from None
        self._registered = True
        self.report(f"registered dataplane {cfg.name} in mesh {cfg.mesh} at {self._api.url}")
        await self._until_stopped(self._find_xds())

        self.phase = Phase.STARTING_SERVICES
        for svc in cfg.local_services:
            await self._until_stopped(svc.start(cfg))
            self._started_services.append(svc)

        self.phase = Phase.STARTING_ENVOY
        write_bootstrap(cfg.bootstrap_path, build_bootstrap(cfg))
        self.envoy = Envoy(cfg, binary)
        await self.envoy.start()

        self.phase = Phase.WAITING_READY
        elapsed = await self._until_stopped(self._first_ready(self.envoy))
        self.ready_once.set()
        self.phase = Phase.RUNNING
        self.report(f"Envoy is ready after {elapsed:.1f}s (pid {self.envoy.pid})")
        for line in summary_lines(cfg):
            self.report("  " + line)
        self._supervisor = asyncio.create_task(self._supervise(self.envoy))
        uid, gid = None, None
        if self.capture is not None:
            await self._until_stopped(self.capture.check_vips())
            uid, gid = self.capture.app_ids()
        if self.command:
            self.app = await process.spawn(
                self.command, env=app_env(self.environ, cfg), death_signal=signal.SIGKILL, uid=uid, gid=gid
            )
            self.report(f"started the app (pid {self.app.pid}): {' '.join(self.command)}")
        self._readiness = asyncio.create_task(self._announce_ready(), name="announce-ready")
        self._registration = asyncio.create_task(self._stay_registered(), name="stay-registered")

    # -- upgrade: the old program hands over, the new one takes over ------------------------

    async def _upgrade(self) -> None:
        """Check the new program runs, stop what cannot cross an exec (the local services: the
        new program starts its own), write the handoff state and exec. The app and Envoy keep
        running and serving throughout; signals are held until the new program handles them."""
        cfg = self.config
        program = handoff.take_request(cfg.work_dir)
        command = handoff.new_command(program)
        handoff.write_status(cfg.work_dir, "preparing", f"checking {command[0]}")
        try:
            version = await self._preflight(program or handoff.own_program())
            await self._check_served(version)
        except MeshlineError as err:
            self.report(f"upgrade refused: {err}")
            handoff.write_status(cfg.work_dir, "failed", str(err))
            return
        if self.phase is not Phase.RUNNING:
            return
        self.phase = Phase.HANDING_OVER
        if self.handle_signals:  # from now on every signal is the new program's
            self._catcher = handoff.SignalCatcher()
        self.report(f"upgrading to meshline {version}: handing the app and Envoy over to"
                    f" {' '.join(program or handoff.own_program())}")  # fmt: skip
        await self._pause_for_handover()
        envoy, app = self.envoy, self.app
        state = handoff.HandoffState(
            from_version=__version__,
            signals_fd=self._catcher.read_fd if self._catcher is not None else None,
            app_pid=app.pid if app is not None and app.returncode is None else None,
            envoy_pid=envoy.pid if envoy is not None and envoy.running else None,
            envoy_epoch=envoy.epoch if envoy is not None else 0,
            envoy_base_id=envoy.base_id if envoy is not None else None,
            inbound_port=cfg.inbound_port,
            metrics_port=cfg.metrics_port,
            ready_for_traffic=self._ready_for_traffic,
            xds_host=cfg.xds_host,
            xds_port=cfg.xds_port,
            xds_tls=cfg.xds_tls,
            xds_ca_file=str(cfg.xds_ca_file) if cfg.xds_ca_file else None,
            xds_source=cfg.xds_source,
            capture=self.capture.hand_over() if self.capture is not None else None,
            services=self._handed,
        )
        path = handoff.write_state(cfg.work_dir, state)
        # from here on a signal stays pending across the exec (this thread) or goes into the
        # catcher's pipe (the others); those caught before it wait in the loop's wakeup pipe
        # (_on_signal puts them in the catcher too)
        signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS)
        for _ in range(3):
            await asyncio.sleep(0)
        handoff.write_status(cfg.work_dir, "exec", f"starting meshline {version}", pid=os.getpid(),
                             from_version=__version__, to_version=version)  # fmt: skip
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        try:
            os.execvpe(command[0], command, {**self.environ, handoff.HANDOFF_ENV: str(path)})
        except OSError as err:  # checked just before, so rare: carry on as before
            path.unlink(missing_ok=True)
            why = f"cannot start {command[0]}: {err.strerror or err}"
            self.report(f"upgrade failed: {why}; this agent carries on")
            handoff.write_status(cfg.work_dir, "failed", why)
            await self._resume_after_failed_handover()
            caught = self._catcher.cancel() if self._catcher is not None else []
            self._catcher = None
            signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD_SIGNALS)
            for signum in caught:
                self._on_signal(signum)

    async def _preflight(self, program: list[str]) -> str:
        """The version of the new program, from running it (a broken install is refused here,
        before anything is stopped)."""
        try:
            proc = await asyncio.create_subprocess_exec(
                *program, "--version", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL, env=self.environ,
            )  # fmt: skip
        except OSError as err:
            raise MeshlineError(f"cannot run {program[0]}: {err.strerror or err}; check --program") from None
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), handoff.PREFLIGHT_TIMEOUT_S)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise MeshlineError(f"{' '.join(program)} --version did not answer in"
                                f" {handoff.PREFLIGHT_TIMEOUT_S:g}s") from None  # fmt: skip
        text = out.decode(errors="replace")
        version = handoff.parse_version(text)
        if proc.returncode != 0 or version is None:
            raise MeshlineError(f"{' '.join(program)} --version failed ({process.describe_exit(proc.returncode or 0)}):"
                                f" {text.strip()[-300:]}")  # fmt: skip
        return version

    async def _check_served(self, version: str) -> None:
        """Refuse an upgrade to a version the control plane would not serve (the new program
        would be refused at registration and stop the workload)."""
        ask = getattr(self._api, "request", None)  # test doubles of the API may not serve it
        if ask is None:
            return
        try:
            health = await ask("GET", "/api/v1/health")
        except MeshlineError as err:  # the new program needs it at once, for its certificate
            raise MeshlineError(f"the control plane does not answer ({err}); try again once it does") from None
        served = versions.refusal(str(health.get("version", "")), version) if isinstance(health, dict) else None
        if served is not None:
            raise MeshlineError(served)

    async def _pause_for_handover(self) -> None:
        for task in (self._readiness, self._registration, self._supervisor):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._handed = {}
        for svc in reversed(self._started_services):
            hand_over = getattr(svc, "hand_over", None)  # a service that keeps its sockets across the exec
            try:
                if hand_over is not None:
                    self._handed[svc.name] = await hand_over()
                else:
                    await svc.stop()
            except Exception as err:  # the exec closes what is left anyway
                self.report(f"stopping {svc.name} failed: {err}")
        self._started_services.clear()

    async def _resume_after_failed_handover(self) -> None:
        for svc in self.config.local_services:
            await svc.start(self.config)
            self._started_services.append(svc)
        self.phase = Phase.RUNNING
        if self.envoy is not None:
            self._supervisor = asyncio.create_task(self._supervise(self.envoy))
        self._readiness = asyncio.create_task(self._announce_ready(), name="announce-ready")
        self._registration = asyncio.create_task(self._stay_registered(), name="stay-registered")

    async def _take_over(self, st: handoff.HandoffState) -> None:
        """In the program an upgrade started: adopt the app and the running Envoy, start the
        local services, hot restart Envoy from this package. If the new Envoy does not become
        ready, the old one keeps serving (it reconnects to this program's services)."""
        cfg = self.config
        check_config(cfg)
        self._prepare_work_dir()
        binary = process.find_envoy(cfg.envoy_path)
        if st.app_pid is not None:
            self.app = process.Adopted(st.app_pid)
        old = Envoy.adopt(cfg, binary, st.envoy_pid, st.envoy_epoch, st.envoy_base_id) if st.envoy_pid else None
        self.envoy = old  # until its successor is ready: a stop meanwhile stops this one
        if self.capture is not None:  # the old program's rules, to the same ports (before any service starts)
            self.capture.take_over(st.capture)
        self.report(f"took over dataplane {cfg.name} from meshline {st.from_version} (pid {os.getpid()} kept;"
                    f" app pid {st.app_pid}, Envoy pid {st.envoy_pid})")  # fmt: skip
        self._ready_for_traffic = st.ready_for_traffic
        self._registered = True  # by the old program: a stop from now on deregisters
        self.phase = Phase.STARTING_SERVICES
        # The xDS proxy first, with the old program's xDS settings: the running Envoy's stream
        # ended with the exec, and the control plane drops a silent instance after a while.
        if st.xds_port:
            cfg.xds_host, cfg.xds_port, cfg.xds_tls, cfg.xds_source = st.xds_host, st.xds_port, st.xds_tls, st.xds_source
            cfg.xds_ca_file = Path(st.xds_ca_file) if st.xds_ca_file else None
        first = sorted(cfg.local_services, key=lambda svc: svc.name != XDS_PROXY)
        for svc in first[:1] if st.xds_port else []:
            await self._until_stopped(svc.start(cfg))
            self._started_services.append(svc)
            self.report(f"xDS proxy up {max(0.0, time.time() - st.started_at):.1f}s after the old program handed over")
        # Then what handed its sockets over (mesh DNS): queries wait in their queues until then.
        for svc in first:
            take_over = getattr(svc, "take_over", None)
            if take_over is not None and svc.name in st.services and svc not in self._started_services:
                handed = st.services[svc.name]
                take_over(handed)
                await self._until_stopped(svc.start(cfg))
                self._started_services.append(svc)
                since = handed.get("stopped_at") if isinstance(handed, dict) else None
                since = since if isinstance(since, (int, float)) else st.started_at
                self.report(f"{svc.name} answering again {max(0.0, time.time() - since):.2f}s after the old"
                            " program stopped answering")  # fmt: skip
        self.phase = Phase.REGISTERING
        self._make_api()
        assert self._api is not None
        try:  # the Dataplane is there already: an unreachable control plane is no reason to stop
            await self._until_stopped(register(self._api, dataplane_doc(cfg, ready=st.ready_for_traffic),
                                               min(cfg.register_timeout, 5.0), self.report))  # fmt: skip
        except Unavailable as err:
            self.report(f"could not register again ({err}); carrying on, it is checked every"
                        f" {self.registration_check_every:g}s")  # fmt: skip
        if not st.xds_port:
            await self._until_stopped(self._find_xds())
        self.phase = Phase.STARTING_SERVICES
        for svc in first:
            if svc not in self._started_services:
                await self._until_stopped(svc.start(cfg))
                self._started_services.append(svc)
        self.phase = Phase.STARTING_ENVOY
        write_bootstrap(cfg.bootstrap_path, build_bootstrap(cfg))
        outcome = await self._hot_restart(binary, old)
        self.ready_once.set()
        self.phase = Phase.RUNNING
        assert self.envoy is not None
        self._supervisor = asyncio.create_task(self._supervise(self.envoy))
        self._readiness = asyncio.create_task(self._announce_ready(), name="announce-ready")
        self._registration = asyncio.create_task(self._stay_registered(), name="stay-registered")
        state = "done" if self.envoy is not old or old is None else "failed"
        handoff.write_status(cfg.work_dir, state, outcome, pid=os.getpid(), from_version=st.from_version,
                             to_version=__version__, envoy_pid=self.envoy.pid, old_envoy_pid=st.envoy_pid,
                             envoy_epoch=self.envoy.epoch, app_pid=st.app_pid)  # fmt: skip
        self.report(outcome)

    async def _hot_restart(self, binary: str, old: Envoy | None) -> str:
        """Make ``self.envoy`` the Envoy of this package; returns what happened, in a sentence."""
        cfg = self.config
        if old is None:  # it had died: an ordinary start
            self.envoy = Envoy(cfg, binary)
            await self.envoy.start()
            self.phase = Phase.WAITING_READY
            await self._until_stopped(self._first_ready(self.envoy))
            return f"upgraded to meshline {__version__}; started Envoy (pid {self.envoy.pid})"
        if old.base_id is None:
            self.envoy = old
            return (f"upgraded the agent to meshline {__version__}; kept Envoy (pid {old.pid}): it was started"
                    " without hot restart, so it is replaced at the next restart of the agent")
        new = Envoy(cfg, binary)
        await new.start(parent=old)
        self.phase = Phase.WAITING_READY
        try:
            elapsed = await self._until_stopped(self._first_ready(new))
        except EnvoyError as err:
            await new.stop(cfg.stop_timeout, last=False)
            self.envoy = old
            return f"upgraded the agent to meshline {__version__}, but the new Envoy failed ({err}); the old Envoy keeps serving"
        self.envoy, self._replaced = new, old
        self._retiring = asyncio.create_task(self._retire(old), name="retire-envoy")
        return (f"upgraded to meshline {__version__}: Envoy pid {new.pid} (hot restart epoch {new.epoch}) ready"
                f" after {elapsed:.1f}s; Envoy pid {old.pid} drains and exits")

    async def _retire(self, old: Envoy) -> None:
        """The replaced Envoy exits by itself once its successor says so (after the drain); reap
        it, and stop it if it outstays that by far."""
        limit = max(1, int(self.config.drain_seconds + 0.999)) + 2 + self.config.stop_timeout + 10
        try:
            rc = await asyncio.wait_for(old.wait(), limit)
            self.report(f"the replaced Envoy (pid {old.pid}) exited ({process.describe_exit(rc)})")
        except TimeoutError:
            self.report(f"the replaced Envoy (pid {old.pid}) did not exit after {limit}s; stopping it")
            await old.stop(self.config.stop_timeout, last=False)

    async def _find_xds(self) -> None:
        """Ask the API where xDS is and how to verify it, then check it answers."""
        from meshline.agent import xds_discovery

        fetch = getattr(self._api, "xds_info", None)  # test doubles of the API may not serve it
        if fetch is None:
            return
        await xds_discovery.discover(self.config, fetch)
        await xds_discovery.probe(self.config, report=getattr(self._api, "xds_handshake_failed", None))
        self.report(f"xDS: {xds_discovery.tried(self.config)}")

    async def _announce_ready(self) -> None:
        """Once the app accepts connections, tell the control plane this instance can take traffic."""
        cfg = self.config
        waited, said = 0.0, False
        while cfg.proxy == "sidecar" and not await app_listening(cfg.app_address, cfg.app_port):
            # Not only cancellation: on 3.11 wait_for() can swallow a cancel that races
            # with a refused connection, and this loop must never outlive RUNNING.
            if self.phase is not Phase.RUNNING or (self.app is not None and self.app.returncode is not None):
                return
            await asyncio.sleep(0.1)
            waited += 0.1
            if waited >= 2 and not said:
                said = True
                self.report(f"waiting for the app to listen on {cfg.app_address}:{cfg.app_port} before taking traffic")
        assert self._api is not None
        self._ready_for_traffic = True
        try:
            await register(self._api, dataplane_doc(cfg, ready=True), cfg.register_timeout, self.report)
        except MeshlineError as err:
            self.report(f"could not mark {cfg.name} ready: {err}")
            return
        self.report(f"{cfg.name} is ready for traffic")

    async def _stay_registered(self) -> None:
        """Register again if the Dataplane is deleted while this agent runs (by hand, or a store
        restored from a backup): without it the control plane refuses this Envoy's stream and
        callers drop the instance until the agent restarts. Stopping the agent deregisters."""
        cfg = self.config
        api = self._api
        assert api is not None
        while self.phase is Phase.RUNNING:
            await asyncio.sleep(self.registration_check_every)
            try:
                await api.get("Dataplane", cfg.mesh, cfg.name)
                continue
            except NotFound:
                pass
            except MeshlineError:
                continue  # unreachable, say: look again next time
            if self.phase is not Phase.RUNNING:
                return
            try:
                await api.put(dataplane_doc(cfg, ready=self._ready_for_traffic))
            except MeshlineError as err:
                self.report(f"dataplane {cfg.name} was deleted from the control plane; registering it again failed: {err}")
                continue
            self.report(f"dataplane {cfg.name} was deleted from the control plane; registered it again")

    def _prepare_work_dir(self) -> None:
        cfg = self.config
        for directory in {cfg.work_dir, *(path.parent for path in cfg.private_sockets())}:
            private_dir(directory)
        fd = os.open(cfg.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise MeshlineError(
                f"another agent is already running dataplane {cfg.name} (work dir {cfg.work_dir});"
                " give this one its own --name"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _check_ports(self) -> None:
        for address, port, option in listen_ports(self.config):
            why = port_in_use(address, port)
            if why is not None:
                raise MeshlineError(
                    f"Envoy cannot listen on {address}:{port} ({why}); stop what uses it or change {option}"
                )

    async def _first_ready(self, envoy: Envoy) -> float:
        """Poll admin /ready until LIVE; report progress; fail if Envoy exits or times out."""
        cfg = self.config
        xds = f"{cfg.xds_host}:{cfg.xds_port}"
        start = time.monotonic()
        next_progress = PROGRESS_AFTER
        exited = asyncio.ensure_future(envoy.wait())
        try:
            while True:
                if exited.done():
                    rc = exited.result()
                    why = diagnose(envoy.log_tail())
                    raise EnvoyError(
                        f"Envoy exited while starting ({process.describe_exit(rc)})"
                        + (f": {why}" if why else "")
                        + f" (log: {cfg.envoy_log_path})"
                    )
                state = await envoy.ready_state()
                elapsed = time.monotonic() - start
                if state.live:
                    return elapsed
                if elapsed >= cfg.ready_timeout:
                    raise not_ready_error(cfg.ready_timeout, state, cfg)
                if elapsed >= next_progress:
                    self.report(progress_message(elapsed, state, xds))
                    next_progress += PROGRESS_EVERY
                await asyncio.wait({exited}, timeout=0.05 if elapsed < 1 else 0.25)
        finally:
            exited.cancel()

    async def _supervise(self, envoy: Envoy) -> None:
        """Restart Envoy with backoff whenever it dies unexpectedly; the app keeps running."""
        backoff = Backoff()
        while True:
            rc = await envoy.wait()
            if self.phase is not Phase.RUNNING:
                return
            ran_for = time.monotonic() - envoy.started_at
            delay = backoff.failed(ran_for)
            why = diagnose(envoy.log_tail())
            self.report(
                f"Envoy exited unexpectedly ({process.describe_exit(rc)}{': ' + why if why else ''});"
                f" restarting it in {delay:g}s"
            )
            while True:
                await asyncio.sleep(delay)
                if self.phase is not Phase.RUNNING:
                    return
                try:
                    await envoy.start()
                    break
                except MeshlineError as err:
                    delay = backoff.failed(0.0)
                    self.report(f"cannot restart Envoy: {err}; trying again in {delay:g}s")
            self.report(f"restarted Envoy (pid {envoy.pid})")

    async def _serve(self) -> None:
        waits: set[asyncio.Future[Any]] = {asyncio.ensure_future(self._stop.wait())}
        app_exit: asyncio.Future[int] | None = None
        if self.app is not None:
            app_exit = asyncio.ensure_future(self.app.wait())
            waits.add(app_exit)
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                if w is not app_exit:
                    w.cancel()
        if app_exit is not None and app_exit.done() and not self._stop.is_set():
            self._app_done_first = True
            self.report(f"the app exited ({process.describe_exit(app_exit.result())}); stopping")

    # -- shutdown -----------------------------------------------------------------------

    async def _shutdown(self) -> None:
        cfg = self.config
        was_running = self._serving
        self.phase = Phase.STOPPING
        if self._upgrading is not None and self._upgrading is not asyncio.current_task():
            self._upgrading.cancel()
            await asyncio.wait({self._upgrading}, timeout=5.0)
        for task in (self._readiness, self._registration):  # before deregistering: no re-register
            if task is not None:
                task.cancel()
                await asyncio.wait({task}, timeout=2.0)  # it also stops on its own (phase)
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        app_running = self.app is not None and self.app.returncode is None
        # A graceful stop tells the app after the drain (see _on_signal); a signal that was not
        # deferred reached it already; any other stop tells it now.
        defer = self._app_signal_deferred or (self._stop_signal is None and was_running)
        if app_running and self._stop_signal is None and not defer and self.app is not None:
            process.signal_group(self.app, signal.SIGTERM)
        try:
            deregistered = (self._registered and self._api is not None
                            and await deregister(self._api, cfg.mesh, cfg.name, self.report))  # fmt: skip
            if deregistered:
                self.report(f"deregistered dataplane {cfg.name}")
            envoy = self.envoy
            # Waiting and draining let requests to the app finish; pointless once the app is gone.
            app_gone = self.command is not None and (self.app is None or self.app.returncode is not None)
            if deregistered and was_running and not app_gone and cfg.callers_ack_timeout > 0:
                await self._wait_or_hurry(self._callers_dropped())
            if envoy is not None and was_running and not app_gone and cfg.drain_seconds > 0 and await envoy.drain():
                self.report(f"draining Envoy's connections for {cfg.drain_seconds:g}s")
                await self._wait_or_hurry(asyncio.sleep(cfg.drain_seconds))
            if defer and self.app is not None and self.app.returncode is None:
                process.signal_group(self.app, signal.SIGTERM)
            if self.app is not None and self.app.returncode is None:
                self.report(f"waiting for the app (pid {self.app.pid}) to exit")
                await self.app.wait()
            if self.app is not None:
                process.signal_group(self.app, signal.SIGKILL)  # whatever it left behind
            if envoy is not None:
                await self._before_envoy_stops()
                await envoy.stop(cfg.stop_timeout)
            if self._retiring is not None and not self._retiring.done() and self._replaced is not None:
                self._retiring.cancel()
                await self._replaced.stop(cfg.stop_timeout, last=False)
            for svc in reversed(self._started_services):
                try:
                    await svc.stop()
                except Exception as err:  # keep stopping the others
                    self.report(f"stopping {svc.name} failed: {err}")
            self._started_services.clear()
        finally:
            if self.capture is not None:
                self.capture.remove()
            if self._own_api and self._api is not None:
                close = getattr(self._api, "close", None)
                if close is not None:
                    await close()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None
            self.phase = Phase.STOPPED

    async def _before_envoy_stops(self) -> None:
        """Local services that read Envoy (the signals reporter) take their last look."""
        for svc in self._started_services:
            last_look = getattr(svc, "before_envoy_stops", None)
            if last_look is not None:
                try:
                    await asyncio.wait_for(last_look(), timeout=5.0)
                except Exception as err:  # never hold the stop
                    self.report(f"{svc.name}: {err or type(err).__name__}")

    async def _callers_dropped(self) -> None:
        """Wait until every caller's sidecar runs a config without this instance, so that no
        new request is on its way here when Envoy starts refusing them."""
        cfg, api = self.config, self._api
        ask = getattr(api, "removal", None)  # test doubles of the API may not serve it
        if ask is None:
            return
        port = int(dataplane_doc(cfg, ready=False)["spec"]["inbound"][0]["port"])
        result = await wait_removed(lambda: ask(cfg.mesh, cfg.name, cfg.service, cfg.address, port),
                                    cfg.callers_ack_timeout)  # fmt: skip
        self.report(result.summary())

    async def _wait_or_hurry(self, aw: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(aw)
        hurry = asyncio.ensure_future(self._hurry.wait())
        await asyncio.wait({task, hurry}, return_when=asyncio.FIRST_COMPLETED)
        for t in (task, hurry):
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
