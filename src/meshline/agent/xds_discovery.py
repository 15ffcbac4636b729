"""Finding the control plane's xDS server before Envoy starts.

The agent asks the API it registered with where xDS is and how to verify it
(``GET /api/v1/xds``: host, port, TLS, CA), instead of guessing "the API's host, port
15678" and a CA file from this host's disk, which may belong to another control plane.
Then it checks that the server answers (TCP, then a TLS handshake with that CA), so a
wrong address or CA is one error naming what was tried instead of Envoy waiting forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from meshline.agent.config import AgentConfig
from meshline.core.errors import MeshlineError, NotFound
from meshline.security import crypto

XDS_INFO_PATH = "/api/v1/xds"
XDS_CA_FILE = "xds-ca.pem"
PROBE_FOR = 10.0  # seconds to keep retrying a refused connection (a control plane starting)
REPORT_TIMEOUT = 3.0  # seconds the agent waits to tell the API about a failed handshake

Fetch = Callable[[], Awaitable[Any]]
Report = Callable[[dict[str, str]], Awaitable[Any]]


def apply_info(cfg: AgentConfig, info: dict[str, Any], api_url: str) -> None:
    """Take the API's answer into ``cfg`` (the address only when --xds-address was not given)."""
    if not cfg.xds_pinned:
        host = info.get("host") or urlsplit(api_url).hostname or "127.0.0.1"
        cfg.xds_host, cfg.xds_port = str(host), int(info["port"])
        cfg.xds_source = f"the address the API at {api_url} gave"
    cfg.xds_tls = bool(info.get("tls"))
    pem = info.get("caPem")
    if cfg.xds_tls and isinstance(pem, str) and pem:
        path = cfg.work_dir / XDS_CA_FILE
        crypto.write_private(path, pem)
        cfg.xds_ca_file = path


async def discover(cfg: AgentConfig, fetch: Fetch) -> bool:
    """Ask the API; False when it does not serve the endpoint (an older control plane)."""
    try:
        info = await fetch()
    except NotFound:
        return False
    if not isinstance(info, dict) or not isinstance(info.get("port"), int):
        raise MeshlineError(f"the API at {cfg.api_url} answered {XDS_INFO_PATH} with {info!r}; is it Meshline?")
    apply_info(cfg, info, cfg.api_url)
    return True


def _tls_context(cfg: AgentConfig) -> ssl.SSLContext | None:
    ca = cfg.xds_ca
    if ca is None:
        return None
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.set_alpn_protocols(["h2"])
    return ctx


def tried(cfg: AgentConfig) -> str:
    how = f"TLS verified with the CA in {cfg.xds_ca}" if cfg.xds_ca is not None else "plaintext"
    return f"the control plane's xDS server at {cfg.xds_host}:{cfg.xds_port} ({cfg.xds_source}; {how})"


def _fix(cfg: AgentConfig) -> str:
    if cfg.xds_pinned:
        return "check --xds-address (drop it to use the address the API gives)"
    return (
        "the control plane advertises its --xds-address: if this host reaches it under another address,"
        " pass --xds-address HOST:PORT"
    )


def _ca_fingerprint(cfg: AgentConfig) -> str:
    try:
        certs = crypto.load_certs(cfg.xds_ca.read_bytes()) if cfg.xds_ca is not None else []
    except (OSError, ValueError):
        return ""
    return crypto.fingerprint(certs[0]) if certs else ""


async def _tell(report: Report | None, cfg: AgentConfig, reason: str) -> None:
    """Tell the control plane (its API) why this agent's xDS handshake failed: the server side
    of a TLS handshake cannot say who failed it, this agent can. Best effort, bounded."""
    if report is None:
        return
    info = {"tried": f"{cfg.xds_host}:{cfg.xds_port}", "source": cfg.xds_source,
            "caFile": str(cfg.xds_ca or ""), "caSha256": _ca_fingerprint(cfg), "reason": reason[:300]}  # fmt: skip
    with contextlib.suppress(Exception):
        await asyncio.wait_for(report(info), REPORT_TIMEOUT)


async def probe(cfg: AgentConfig, within: float = PROBE_FOR, clock: Callable[[], float] = time.monotonic,
                report: Report | None = None) -> None:  # fmt: skip
    """Connect (and handshake) once; retry a refused connection for ``within`` seconds.
    ``report``: where a failed TLS handshake is told (the API's handshake-failure endpoint)."""
    tls = _tls_context(cfg)
    deadline = clock() + within
    delay = 0.1
    while True:
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(cfg.xds_host, cfg.xds_port, ssl=tls,
                                        server_hostname=cfg.xds_host if tls else None),  # fmt: skip
                5.0,
            )
        except ssl.SSLCertVerificationError as err:
            await _tell(report, cfg, f"cannot verify the server's certificate: {err.verify_message}")
            raise MeshlineError(
                f"cannot verify {tried(cfg)}: {err.verify_message}; the server's certificate is not from"
                " that CA (is it another control plane?) or does not name that host; " + _fix(cfg)
            ) from None
        except ssl.SSLError as err:
            await _tell(report, cfg, f"TLS handshake failed: {err.reason or err}")
            raise MeshlineError(
                f"TLS handshake with {tried(cfg)} failed: {err.reason or err}; is it serving TLS? " + _fix(cfg)
            ) from None
        except (OSError, TimeoutError) as err:
            if clock() + delay < deadline:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            why = err.strerror if isinstance(err, OSError) and err.strerror else type(err).__name__
            raise MeshlineError(f"cannot reach {tried(cfg)}: {why} (for {within:g}s); " + _fix(cfg)) from None
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
        return
