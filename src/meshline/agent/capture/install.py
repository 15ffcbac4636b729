"""Install, remove and report the capture rules of this network namespace.

One rule set per network namespace (a host, or a container's namespace), owned by one
agent. nftables is used where it works (one atomic ``nft -f``), iptables otherwise
(``iptables-restore --noflush``, then the same for IPv6; a failure part-way removes what
was added, so nothing is ever half-installed). Who owns the rules is kept in a state file
named after the namespace, so the next start, or ``meshline transparent-proxy uninstall``,
removes the rules of an agent that was killed with ``kill -9``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from meshline.agent.capture import rules
from meshline.agent.capture.rules import CaptureConfig
from meshline.core.errors import MeshlineError

Backend = Literal["nftables", "iptables"]
STATE_DIR = Path(os.environ.get("MESHLINE_CAPTURE_STATE_DIR", "/run/meshline/capture"))
CAP_NET_ADMIN = 12


class CaptureError(MeshlineError):
    """Capture rules cannot be installed or removed; the message says what to do."""


def _run(argv: list[str], input: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, input=input, capture_output=True, text=True, timeout=20, check=False)
    except FileNotFoundError:
        return subprocess.CompletedProcess(argv, 127, "", f"{argv[0]}: not found")


def has_net_admin() -> bool:
    """CAP_NET_ADMIN in the effective set (root has it unless it was dropped, as in many containers)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except (OSError, ValueError):
        return os.geteuid() == 0  # no /proc: trust root
    return False


def namespace_id() -> str:
    """This process's network namespace, as the kernel names it (``net:[inode]``)."""
    try:
        return str(os.stat("/proc/self/ns/net").st_ino)
    except OSError:
        return "default"


def choose_backend() -> Backend:
    if shutil.which("nft") and _run(["nft", "list", "tables"]).returncode == 0:
        return "nftables"
    if shutil.which("iptables-restore") and _run(["iptables-save", "-t", "nat"]).returncode == 0:
        return "iptables"
    raise CaptureError(
        "transparent mode needs nftables or iptables; install one (Debian: apt-get install nftables)"
        " or run without --transparent and give --upstream SERVICE=PORT instead"
    )


@dataclass(frozen=True)
class Installed:
    backend: Backend
    owner_pid: int
    namespace: str
    config: CaptureConfig
    installed_at: float

    def to_json(self) -> dict[str, Any]:
        return {"backend": self.backend, "ownerPid": self.owner_pid, "namespace": self.namespace,
                "config": asdict(self.config), "installedAt": self.installed_at}  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Installed:
        conf: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data["config"].items()}
        return cls(data["backend"], int(data["ownerPid"]), str(data["namespace"]), CaptureConfig(**conf),
                   float(data["installedAt"]))  # fmt: skip


def _state_path(state_dir: Path) -> Path:
    return state_dir / f"{namespace_id()}.json"


def read_state(state_dir: Path = STATE_DIR) -> Installed | None:
    try:
        return Installed.from_json(json.loads(_state_path(state_dir).read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_state(state: Installed, state_dir: Path) -> None:
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = _state_path(state_dir)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(state.to_json(), f)
    os.replace(tmp, path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- what the kernel has -------------------------------------------------------------


def nft_installed() -> bool:
    return shutil.which("nft") is not None and _run(["nft", "list", "table", "inet", rules.TABLE]).returncode == 0


def iptables_installed(version: int = 4) -> bool:
    save = "iptables-save" if version == 4 else "ip6tables-save"
    if shutil.which(save) is None:
        return False
    out = _run([save]).stdout
    return any(f":{chain} " in out for chains in rules.iptables_chains(version).values() for chain in chains)


def installed_rules() -> str:
    """The Meshline rules the kernel has in this namespace, as text ("" when none)."""
    parts = []
    if nft_installed():
        parts.append(_run(["nft", "list", "table", "inet", rules.TABLE]).stdout)
    for version, save in ((4, "iptables-save"), (6, "ip6tables-save")):
        if iptables_installed(version):
            lines = [ln for ln in _run([save]).stdout.splitlines() if rules.CHAIN_PREFIX in ln]
            parts.append(f"# {save}\n" + "\n".join(lines) + "\n")
    return "".join(parts)


_FOREIGN_NAT = re.compile(r"\b(redirect|dnat|tproxy)\b", re.IGNORECASE)


def foreign_redirects() -> list[str]:
    """NAT/TPROXY rules of someone else (another mesh, a container runtime) that would
    fight ours for the same connections."""
    found: list[str] = []
    if shutil.which("nft"):
        table = ""
        for line in _run(["nft", "list", "ruleset"]).stdout.splitlines():
            m = re.match(r"\s*table (\S+) (\S+)", line)
            if m:
                table = f"{m.group(1)} {m.group(2)}"
            elif table != f"inet {rules.TABLE}" and _FOREIGN_NAT.search(line) and "iptables" not in table:
                found.append(f"{table}: {line.strip()}")
    for save in ("iptables-save", "ip6tables-save"):
        if shutil.which(save) is None:
            continue
        for line in _run([save, "-t", "nat"]).stdout.splitlines():
            if line.startswith("-A") and _FOREIGN_NAT.search(line) and rules.CHAIN_PREFIX not in line:
                found.append(f"{save}: {line.strip()}")
    return found


# -- install / remove ------------------------------------------------------------------


def _remove_rules() -> None:
    if nft_installed():
        _run(["nft", "delete", "table", "inet", rules.TABLE])
    for version in (4, 6):
        if not iptables_installed(version):
            continue
        tool = "iptables" if version == 4 else "ip6tables"
        for table, chains in rules.iptables_chains(version).items():
            for parent in ("PREROUTING", "OUTPUT"):
                for line in _run([tool, "-t", table, "-S", parent]).stdout.splitlines():
                    if line.startswith("-A ") and any(line.endswith(f"-j {chain}") for chain in chains):
                        _run([tool, "-t", table, "-D", *line.split()[1:]])
            for chain in chains:
                _run([tool, "-t", table, "-F", chain])
                _run([tool, "-t", table, "-X", chain])


def _apply(cfg: CaptureConfig, backend: Backend) -> None:
    if backend == "nftables":
        done = _run(["nft", "-f", "-"], input=rules.nft_ruleset(cfg))
        if done.returncode != 0:
            raise CaptureError(f"nft refused the capture rules: {done.stderr.strip()[:300]}")
        return
    versions = (4, 6) if cfg.ipv6 and shutil.which("ip6tables-restore") else (4,)
    for version in versions:
        tool = "iptables-restore" if version == 4 else "ip6tables-restore"
        done = _run([tool, "--noflush"], input=rules.iptables_rules(cfg, version))
        if done.returncode != 0:
            _remove_rules()
            raise CaptureError(f"{tool} refused the capture rules: {done.stderr.strip()[:300]}")


def check_config(cfg: CaptureConfig, app_ports: tuple[int, ...] = ()) -> None:
    """What would make the rules wrong, before anything is installed."""
    listeners = {cfg.outbound_port, cfg.inbound_port} | ({cfg.dns_port} if cfg.dns_port else set())
    for port in app_ports:
        if port in cfg.exclude_inbound_ports:
            raise CaptureError(
                f"port {port} is the app's port and also excluded from inbound capture (--exclude-inbound-port);"
                " remove it from the exclusions, or the app would be reachable around its sidecar"
            )
        if port in listeners:
            raise CaptureError(f"port {port} is the app's port and also one of Envoy's capture ports; change one")
    if len(listeners) < (3 if cfg.dns_port else 2):
        raise CaptureError("the outbound, inbound and DNS capture ports must differ")


def install(cfg: CaptureConfig, *, owner_pid: int | None = None, state_dir: Path = STATE_DIR,
            report: Any = None, backend: Backend | None = None) -> Installed:
    """Install ``cfg`` for this namespace (replacing stale rules of a dead agent).
    ``backend``: None picks nftables where it works, else iptables."""
    if not has_net_admin():
        raise CaptureError(
            "installing capture rules needs root or CAP_NET_ADMIN; run the agent as root"
            " (or with AmbientCapabilities=CAP_NET_ADMIN under systemd), or drop --transparent"
        )
    owner_pid = os.getpid() if owner_pid is None else owner_pid
    state = read_state(state_dir)
    present = nft_installed() or iptables_installed(4) or iptables_installed(6)
    if state is not None and state.owner_pid != owner_pid and _alive(state.owner_pid) and present:
        raise CaptureError(
            f"another agent (pid {state.owner_pid}) owns this network namespace's capture rules;"
            " run one transparent workload per host or network namespace, or stop that agent"
        )
    if present:
        if report is not None:
            who = f" of a previous agent (pid {state.owner_pid})" if state is not None else ""
            report(f"removing stale capture rules{who}")
        _remove_rules()
    foreign = foreign_redirects()
    if foreign:
        raise CaptureError(
            "this network namespace already has redirect rules that would compete with Meshline's: "
            + "; ".join(foreign[:3])
            + " (remove them, or run the workload without --transparent)"
        )
    backend = backend or choose_backend()
    _apply(cfg, backend)
    installed = Installed(backend, owner_pid, namespace_id(), cfg, time.time())
    _write_state(installed, state_dir)
    return installed


def uninstall(state_dir: Path = STATE_DIR) -> bool:
    """Remove Meshline's rules from this namespace; True when there were any."""
    present = nft_installed() or iptables_installed(4) or iptables_installed(6)
    if present:
        if not has_net_admin():
            raise CaptureError("removing capture rules needs root or CAP_NET_ADMIN")
        _remove_rules()
    with contextlib.suppress(FileNotFoundError):
        _state_path(state_dir).unlink()
    return present


def status(state_dir: Path = STATE_DIR) -> dict[str, Any]:
    """What is installed here, who owns it, and whether that owner still runs."""
    state = read_state(state_dir)
    text = installed_rules()
    out: dict[str, Any] = {"namespace": namespace_id(), "installed": bool(text), "rules": text}
    if state is not None:
        out.update(state.to_json())
        out["ownerAlive"] = _alive(state.owner_pid)
    return out
