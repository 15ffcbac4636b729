"""The traffic-capture rules of a transparent workload, as text for nftables or iptables.

Pure functions of a :class:`CaptureConfig`; nothing here touches the kernel (see
``capture.install``). What the rules do, in the order the kernel meets them::

  a packet from another host to any local TCP port        (nat PREROUTING)
      excluded inbound port (ssh, the agent's metrics)?  -> untouched
      else                                               -> REDIRECT :inbound_port (Envoy)
  a connection the workload opens                          (nat OUTPUT)
      from the proxy's group (Envoy, the agent)?         -> untouched (no loop)
      DNS (udp/tcp 53)?                                  -> REDIRECT :dns_port (mesh DNS)
      to loopback?                                       -> untouched (local services)
      excluded user, port or CIDR?                       -> untouched
      else (TCP)                                         -> REDIRECT :outbound_port (Envoy)
  with ``app_uid`` set, a loopback connection to the app's ports or Envoy's listeners
  from anyone but that user and the proxy's group        (filter OUTPUT) -> reset

Envoy finds each redirected connection's original destination with SO_ORIGINAL_DST.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

TABLE = "meshline"  # nftables table (family inet: IPv4 and IPv6 in one)
CHAIN_PREFIX = "MESHLINE_"  # iptables chains
DEFAULT_OUTBOUND_PORT = 15001
DEFAULT_INBOUND_PORT = 15006
DEFAULT_DNS_PORT = 15053
# Envoy and the agent run with this group; their own connections are never captured.
DEFAULT_PROXY_GID = 5678
DEFAULT_EXCLUDE_INBOUND_PORTS = (22,)  # ssh: never lock the operator out of the host


@dataclass(frozen=True)
class CaptureConfig:
    outbound_port: int = DEFAULT_OUTBOUND_PORT
    inbound_port: int = DEFAULT_INBOUND_PORT
    dns_port: int | None = DEFAULT_DNS_PORT  # None: DNS is not redirected
    proxy_gid: int = DEFAULT_PROXY_GID
    exclude_inbound_ports: tuple[int, ...] = DEFAULT_EXCLUDE_INBOUND_PORTS
    exclude_outbound_ports: tuple[int, ...] = ()
    exclude_outbound_cidrs: tuple[str, ...] = ()
    exclude_uids: tuple[int, ...] = ()
    # When set: only this user's connections are captured, and only this user (and the
    # proxy) may reach ``local_ports`` over loopback, so another local user can neither
    # call the app around Envoy nor borrow the workload's outbound identity.
    app_uid: int | None = None
    local_ports: tuple[int, ...] = field(default=())  # app ports + Envoy's outbound listeners
    ipv6: bool = True

    def cidrs(self, version: int) -> list[str]:
        out = []
        for cidr in self.exclude_outbound_cidrs:
            net = ipaddress.ip_network(cidr, strict=False)
            if net.version == version:
                out.append(str(net))
        return out


def _set(values: Iterable[int | str]) -> str:
    items = [str(v) for v in values]
    return items[0] if len(items) == 1 else "{ " + ", ".join(items) + " }"


def nft_ruleset(cfg: CaptureConfig) -> str:
    """One ``nft -f`` script: (re)creates table inet meshline atomically."""
    pre = []
    if cfg.exclude_inbound_ports:
        pre.append(f"tcp dport {_set(cfg.exclude_inbound_ports)} return")
    pre.append(f"meta l4proto tcp redirect to :{cfg.inbound_port}")
    out = [f"meta skgid {cfg.proxy_gid} return"]
    if cfg.exclude_uids:
        out.append(f"meta skuid {_set(cfg.exclude_uids)} return")
    if cfg.app_uid is not None:
        out.append(f"meta skuid != {cfg.app_uid} return")
    if cfg.dns_port is not None:
        out.append(f"udp dport 53 redirect to :{cfg.dns_port}")
        out.append(f"tcp dport 53 redirect to :{cfg.dns_port}")
    out.append('oifname "lo" ip daddr 127.0.0.0/8 return')
    if cfg.ipv6:
        out.append('oifname "lo" ip6 daddr ::1 return')
    if cfg.exclude_outbound_ports:
        out.append(f"tcp dport {_set(cfg.exclude_outbound_ports)} return")
    if cfg.cidrs(4):
        out.append(f"ip daddr {_set(cfg.cidrs(4))} return")
    if cfg.ipv6 and cfg.cidrs(6):
        out.append(f"ip6 daddr {_set(cfg.cidrs(6))} return")
    out.append(f"meta l4proto tcp redirect to :{cfg.outbound_port}")
    if not cfg.ipv6:  # Envoy listens on IPv4 only: leave IPv6 alone
        pre.insert(0, "meta nfproto ipv6 return")
        out.insert(0, "meta nfproto ipv6 return")
    lines = [
        f"table inet {TABLE} {{}}",  # make sure it exists, so the delete below never fails
        f"delete table inet {TABLE}",
        f"table inet {TABLE} {{",
        "  chain prerouting {",
        "    type nat hook prerouting priority dstnat; policy accept;",
        *("    " + r for r in pre),
        "  }",
        "  chain output {",
        "    type nat hook output priority -100; policy accept;",
        *("    " + r for r in out),
        "  }",
    ]
    if cfg.app_uid is not None and cfg.local_ports:
        lines += [
            "  chain local {",
            "    type filter hook output priority 0; policy accept;",
            f'    oifname "lo" tcp dport {_set(sorted(set(cfg.local_ports)))} meta skgid != {cfg.proxy_gid}'
            f" meta skuid != {cfg.app_uid} reject with tcp reset",
            "  }",
        ]
    lines.append("}")
    return "\n".join(lines) + "\n"


def _chain(name: str) -> str:
    return CHAIN_PREFIX + name


def iptables_rules(cfg: CaptureConfig, version: int = 4) -> str:
    """``iptables-restore --noflush`` input (``ip6tables-restore`` for version 6) that adds
    Meshline's chains and the jumps to them; :func:`iptables_removal` undoes it."""
    loopback = "127.0.0.0/8" if version == 4 else "::1/128"
    inbound, output = _chain("INBOUND"), _chain("OUTPUT")
    nat = [
        "*nat",
        f":{inbound} - [0:0]",
        f":{output} - [0:0]",
        f"-A PREROUTING -p tcp -j {inbound}",
        f"-A OUTPUT -j {output}",
    ]
    nat += [f"-A {inbound} -p tcp --dport {p} -j RETURN" for p in cfg.exclude_inbound_ports]
    nat.append(f"-A {inbound} -p tcp -j REDIRECT --to-ports {cfg.inbound_port}")
    nat.append(f"-A {output} -m owner --gid-owner {cfg.proxy_gid} -j RETURN")
    nat += [f"-A {output} -m owner --uid-owner {uid} -j RETURN" for uid in cfg.exclude_uids]
    if cfg.app_uid is not None:
        nat.append(f"-A {output} -m owner ! --uid-owner {cfg.app_uid} -j RETURN")
    if cfg.dns_port is not None:
        nat.append(f"-A {output} -p udp --dport 53 -j REDIRECT --to-ports {cfg.dns_port}")
        nat.append(f"-A {output} -p tcp --dport 53 -j REDIRECT --to-ports {cfg.dns_port}")
    nat.append(f"-A {output} -o lo -d {loopback} -j RETURN")
    nat += [f"-A {output} -p tcp --dport {p} -j RETURN" for p in cfg.exclude_outbound_ports]
    nat += [f"-A {output} -d {c} -j RETURN" for c in cfg.cidrs(version)]
    nat.append(f"-A {output} -p tcp -j REDIRECT --to-ports {cfg.outbound_port}")
    nat.append("COMMIT")
    out = nat
    if cfg.app_uid is not None and cfg.local_ports:
        local = _chain("LOCAL")
        ports = ",".join(str(p) for p in sorted(set(cfg.local_ports)))
        reset = "tcp-reset"
        out += [
            "*filter",
            f":{local} - [0:0]",
            f"-A OUTPUT -o lo -p tcp -m multiport --dports {ports} -j {local}",
            f"-A {local} -m owner --gid-owner {cfg.proxy_gid} -j RETURN",
            f"-A {local} -m owner --uid-owner {cfg.app_uid} -j RETURN",
            f"-A {local} -p tcp -j REJECT --reject-with {reset}",
            "COMMIT",
        ]
    return "\n".join(out) + "\n"


def iptables_chains(version: int = 4) -> dict[str, tuple[str, ...]]:
    """table -> Meshline's chains in it (what removal deletes)."""
    del version  # the same names for IPv4 and IPv6
    return {"nat": (_chain("INBOUND"), _chain("OUTPUT")), "filter": (_chain("LOCAL"),)}
