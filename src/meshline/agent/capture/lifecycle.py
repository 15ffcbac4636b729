"""What a transparent agent does around its usual lifecycle (``Agent`` calls these):

* :meth:`Capture.preflight`, before anything is registered or started: every reason the
  rules could not be installed (no CAP_NET_ADMIN, no nft/iptables, an excluded port that is
  the app's port, another live owner, a foreign rule set), each a one-line error; then the
  agent joins the proxy group, so its own connections (to the control plane, DNS forwards)
  and Envoy's are never captured;
* :meth:`Capture.install`, right after: the rules go in (all or nothing), before the agent opens
  a connection or starts Envoy or the app;
* :meth:`Capture.check_vips`, once Envoy has its config and before the app starts: the mesh's
  VIP range must be free and routable on this host;
* :meth:`Capture.remove`, last in shutdown, whatever happened before.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from meshline.agent.capture import install
from meshline.agent.capture.dns import DnsServer
from meshline.agent.capture.dns_table import DnsTable
from meshline.agent.capture.install import CaptureError
from meshline.agent.capture.rules import CaptureConfig
from meshline.agent.config import AgentConfig, TransparentOptions
from meshline.core.locations import DEFAULT_API_PORT, DEFAULT_XDS_PORT
from meshline.core.tasks import wait_set

Report = Callable[[str], None]
TABLE_WAIT_S = 10.0  # after Envoy is ready its listeners (and so the table) have arrived


def capture_config(config: AgentConfig) -> CaptureConfig:
    t = config.transparent
    assert t is not None
    local = (config.app_port, t.outbound_port, *(u.port for u in config.upstreams))
    # the control plane's own ports are never captured: the app may call its API (a CLI on the host)
    control = {DEFAULT_API_PORT, DEFAULT_XDS_PORT, config.xds_port, _port_of(config.api_url)}
    inbound_excluded = set(t.exclude_inbound_ports) | ({config.metrics_port} if config.metrics_port else set())
    return CaptureConfig(
        outbound_port=t.outbound_port,
        inbound_port=t.inbound_port,
        dns_port=t.dns_port,
        proxy_gid=t.proxy_gid,
        exclude_inbound_ports=tuple(sorted(inbound_excluded)),
        exclude_outbound_ports=tuple(sorted(set(t.exclude_outbound_ports) | control)),
        exclude_outbound_cidrs=t.exclude_outbound_cidrs,
        exclude_uids=t.exclude_uids,
        app_uid=t.app_uid,
        local_ports=local if t.app_uid is not None else (),
        ipv6=t.ipv6,
    )


def _port_of(url: str) -> int:
    from urllib.parse import urlsplit

    parts = urlsplit(url if "://" in url else f"http://{url}")
    return parts.port or (443 if parts.scheme == "https" else 80)


def routes_overlapping(cidr: str) -> list[str]:
    """This host's routes (other than the default) into ``cidr``."""
    net = ipaddress.ip_network(cidr)
    try:
        out = subprocess.run(["ip", "-j", "route", "show", "table", "all"], capture_output=True, text=True,
                             timeout=10, check=False).stdout  # fmt: skip
        routes = json.loads(out or "[]")
    except (OSError, ValueError, subprocess.SubprocessError):
        return []
    found = []
    for r in routes:
        dst = str(r.get("dst", ""))
        if dst in ("", "default") or r.get("type") in ("broadcast", "local") and r.get("table") == "local":
            continue
        with contextlib.suppress(ValueError):
            if ipaddress.ip_network(dst, strict=False).overlaps(net):
                found.append(f"{dst} dev {r.get('dev', '?')}")
    return found


def routable(vip: str) -> bool:
    """A connection to ``vip`` would leave (capture rules see it only then)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((vip, 80))
        return True
    except OSError:
        return False


class Capture:
    def __init__(self, config: AgentConfig, table: DnsTable, report: Report) -> None:
        assert config.transparent is not None
        self.config = config
        self.options: TransparentOptions = config.transparent
        self.table = table
        self.report = report
        self.rules = capture_config(config)
        self.installed = False
        self.state_dir = self.options.state_dir or install.STATE_DIR
        self.original_gid = os.getgid()

    def app_ids(self) -> tuple[int | None, int]:
        """(uid, gid) the app runs as: its user (None: the agent's), never the proxy group."""
        uid = self.options.app_uid if self.options.app_uid not in (None, os.getuid()) else None
        gid = self.options.app_gid if self.options.app_gid is not None else self.original_gid
        return uid, gid

    def preflight(self) -> None:
        if not install.has_net_admin():
            raise CaptureError(
                "--transparent needs root or CAP_NET_ADMIN to install capture rules; run the agent as root"
                " (or with AmbientCapabilities=CAP_NET_ADMIN CAP_SETGID under systemd), or drop --transparent"
                " and use --upstream SERVICE=PORT"
            )
        install.check_config(self.rules, (self.config.app_port,))
        install.choose_backend()
        state = install.read_state(self.state_dir)
        if state is not None and state.owner_pid != os.getpid() and install._alive(state.owner_pid) and (
            install.nft_installed() or install.iptables_installed(4)
        ):
            raise CaptureError(
                f"another agent (pid {state.owner_pid}) owns this network namespace's capture rules;"
                " run one transparent workload per host or network namespace, or stop that agent"
            )
        foreign = install.foreign_redirects()
        if foreign:
            raise CaptureError(
                "this network namespace already has redirect rules that would compete with Meshline's: "
                + "; ".join(foreign[:3]) + " (remove them, or run the workload without --transparent)"
            )
        try:  # Envoy (started by this process) and the agent's own sockets: never captured
            os.setgid(self.options.proxy_gid)
        except PermissionError:
            raise CaptureError(
                f"--transparent needs root or CAP_SETGID to run the proxy in group {self.options.proxy_gid}"
                " (its connections must not be captured)"
            ) from None

    def install(self) -> None:
        """The rules, before the agent opens any connection (they are all in the proxy group, so
        never captured; a connection open before the rules went in was reset by them now and
        then). The app has not started yet: nothing of it is captured half-way."""
        done = install.install(self.rules, state_dir=self.state_dir, report=self.report)
        self.installed = True
        who = f"user {self.rules.app_uid}'s" if self.rules.app_uid is not None else "every user's"
        self.report(
            f"capture rules installed ({done.backend}): {who} outbound TCP -> :{self.rules.outbound_port},"
            f" inbound TCP -> :{self.rules.inbound_port}"
            + (f", DNS -> :{self.rules.dns_port}" if self.rules.dns_port else "")
            + f"; not captured: inbound ports {', '.join(map(str, self.rules.exclude_inbound_ports)) or '-'},"
            f" outbound ports {', '.join(map(str, self.rules.exclude_outbound_ports)) or '-'}"
        )

    async def check_vips(self) -> None:
        """Once Envoy has its first config (and so the VIP range): the range must be free and routable
        on this host; a failure stops the agent, which removes the rules."""
        if not self.table.received:
            await wait_set(self.table.changed, TABLE_WAIT_S)
        vip_range = self.table.vip_range
        if not vip_range:
            return
        clash = routes_overlapping(vip_range)
        if clash:
            raise CaptureError(
                f"the mesh's VIP range {vip_range} collides with this host's route {clash[0]}; set the Mesh's"
                " spec.transparentProxy.vipRange to a range no host uses (e.g. 240.241.0.0/16)"
            )
        first = str(next(ipaddress.ip_network(vip_range).hosts()))
        if not routable(first):
            raise CaptureError(
                f"this host has no route to the VIP range {vip_range} (a connection to {first} fails before"
                " any capture rule sees it); add a default route, or `ip route add "
                f"{vip_range} dev <your interface>`"
            )

    def hand_over(self) -> dict[str, Any]:
        """Before an upgrade's exec: the rules stay installed (this pid owns them still). The
        new program is given the ports they redirect to (its Envoy listeners and DNS must be
        exactly there) and the app's group (this process is in the proxy group by now)."""
        return {"original_gid": self.original_gid, "outbound_port": self.rules.outbound_port,
                "inbound_port": self.rules.inbound_port, "dns_port": self.rules.dns_port or 0}  # fmt: skip

    def take_over(self, state: dict[str, Any] | None) -> None:
        """In the program an upgrade started: keep the rules the old program left when they
        are exactly these (same ports; nothing is removed, so no connection misses capture),
        else install these in their place. Either way they are this pid's, removed at its stop."""
        state = state or {}
        if isinstance(state.get("original_gid"), int):
            self.original_gid = state["original_gid"]
        with contextlib.suppress(PermissionError):  # kept across the exec; set again to be sure
            os.setgid(self.options.proxy_gid)
        found = install.read_state(self.state_dir)
        present = install.nft_installed() or install.iptables_installed(4)
        if found is not None and present and found.owner_pid == os.getpid() and found.config == self.rules:
            self.installed = True
            self.report(f"capture rules kept ({found.backend}): outbound -> :{self.rules.outbound_port},"
                        f" inbound -> :{self.rules.inbound_port}"
                        + (f", DNS -> :{self.rules.dns_port}" if self.rules.dns_port else ""))  # fmt: skip
            return
        self.report("the capture rules the old program left differ from this version's; replacing them")
        self.install()

    def remove(self) -> None:
        if not self.installed:
            return
        try:
            install.uninstall(self.state_dir)
            self.report("capture rules removed")
        except CaptureError as err:
            self.report(f"could not remove the capture rules: {err}; run `meshline transparent-proxy uninstall`")
        self.installed = False


class DnsService:
    """The mesh DNS server as one of the agent's local services (started before Envoy), on
    127.0.0.1 and, where IPv6 is captured too, on ::1 (REDIRECT sends a query to an IPv6
    nameserver there)."""

    name = "mesh-dns"

    def __init__(self, table: DnsTable, resolv_conf: Path = Path("/etc/resolv.conf")) -> None:
        self.table = table
        self.resolv_conf = resolv_conf
        self.servers: list[DnsServer] = []
        self.inherited: dict[str, tuple[int, int]] = {}  # address -> (udp, tcp) fds, from an upgrade

    async def hand_over(self) -> dict[str, Any]:
        """Before an upgrade's exec: stop answering, keep the sockets (inheritable) and hand
        them over with the table, so the new program answers on the very same port at once
        (the capture rules redirect there) and from the names the old one knew."""
        sockets = {}
        for server in self.servers:
            fds = await server.detach()
            if fds is not None:
                sockets[server.address] = fds
        self.servers.clear()
        self.inherited = dict(sockets)
        return {"table": self.table.snapshot() if self.table.received else None, "stopped_at": time.time(),
                "sockets": {address: list(fds) for address, fds in sockets.items()}}  # fmt: skip

    def take_over(self, state: dict[str, Any]) -> None:
        """In the program an upgrade started: what :meth:`hand_over` left (before :meth:`start`)."""
        if isinstance(state.get("table"), str):
            self.table.update(state["table"])
        for address, fds in (state.get("sockets") or {}).items():
            if isinstance(fds, list) and len(fds) == 2 and all(isinstance(fd, int) for fd in fds):
                self.inherited[str(address)] = (fds[0], fds[1])

    async def start(self, config: AgentConfig) -> None:
        from meshline.agent.capture.dns import host_resolvers
        from meshline.core.errors import MeshlineError

        t = config.transparent
        if t is None or not t.dns_port:
            return
        upstreams = host_resolvers(self.resolv_conf)  # the host's resolver as it is now
        for address in ("127.0.0.1", *(("::1",) if t.ipv6 else ())):
            server = DnsServer(self.table, t.dns_port, address=address, upstreams=upstreams)
            server.inherited = self.inherited.pop(address, None)
            try:
                await server.start()
            except OSError as err:
                await self.stop()
                raise MeshlineError(
                    f"mesh DNS cannot listen on {address} port {t.dns_port} ({err.strerror}); change --dns-port"
                ) from None
            self.servers.append(server)

    async def stop(self) -> None:
        for server in self.servers:
            await server.stop()
        self.servers.clear()
        for fds in self.inherited.values():  # handed over but never taken up
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.inherited.clear()
