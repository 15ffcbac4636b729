"""The agent's client of the control-plane API (register, deregister, certificates), on
:mod:`meshline.agent.http`. Same errors as the CLI's client (:mod:`meshline.api.client`)."""

from __future__ import annotations

import json
import ssl
from typing import Any
from urllib.parse import urlencode

from meshline.agent import http
from meshline.api.common import (
    XDS_HANDSHAKE_FAILURES_PATH,
    default_url,
    default_verify,
    error_for,
    resource_path,
    unreachable,
)
from meshline.core.versions import USER_AGENT_PREFIX, current


class AgentApi:
    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 5.0,
                 verify: bool | str = True) -> None:  # fmt: skip
        self.url = (url or default_url()).rstrip("/")
        # Only the token the agent was given: no fallback to the host's admin token.
        # the control plane checks the compatibility rule on it (core/versions.py)
        self._headers = {"Accept": "application/json", "User-Agent": USER_AGENT_PREFIX + current()}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._timeout = timeout
        self._tls: ssl.SSLContext | None = None
        if self.url.startswith("https://"):
            ca = default_verify(self.url) if verify is True else verify
            self._tls = ssl.create_default_context(cafile=ca if isinstance(ca, str) else None)

    async def request(self, method: str, path: str, json: Any = None) -> Any:
        headers = dict(self._headers)
        body = b""
        if json is not None:
            body = _dumps(json)
            headers["Content-Type"] = "application/json"
        try:
            resp = await http.request(method, self.url + path, headers=headers, body=body, tls=self._tls,
                                      timeout=self._timeout)  # fmt: skip
        except http.HttpError as err:
            raise unreachable(self.url, err) from None
        failed = error_for(resp.status, resp.reason, resp.body)
        if failed is not None:
            raise failed
        return resp.json()

    async def put(self, doc: dict[str, Any]) -> Any:
        return await self.request("PUT", resource_path(doc["kind"], doc.get("mesh"), doc["name"]), json=doc)

    async def delete(self, kind: str, mesh: str | None, name: str) -> Any:
        return await self.request("DELETE", resource_path(kind, mesh, name))

    async def xds_info(self) -> Any:
        """Where the control plane's xDS server is and its CA (see agent.xds_discovery)."""
        return await self.request("GET", "/api/v1/xds")

    async def xds_handshake_failed(self, info: dict[str, str]) -> Any:
        """Why this agent's TLS handshake with xDS failed, for the control plane's log."""
        return await self.request("POST", XDS_HANDSHAKE_FAILURES_PATH, json=info)

    async def removal(self, mesh: str, name: str, service: str, address: str, port: int) -> Any:
        """Whether every caller ACKed a config without this instance (see controlplane.removal)."""
        query = urlencode({"service": service, "address": address, "port": port})
        return await self.request("GET", f"{resource_path('Dataplane', mesh, name)}/removal?{query}")

    async def get(self, kind: str, mesh: str | None, name: str) -> Any:
        return await self.request("GET", resource_path(kind, mesh, name))


def _dumps(doc: Any) -> bytes:
    return json.dumps(doc).encode()
