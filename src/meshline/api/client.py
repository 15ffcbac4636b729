"""API clients on httpx, used by the CLI and tests (synchronous and asynchronous)."""

from __future__ import annotations

import ssl
from typing import Any

import httpx

from meshline.api.common import (
    DEFAULT_URL,
    default_token,
    default_url,
    default_verify,
    error_for,
    is_local,
    resource_path,
    unreachable,
)

__all__ = [
    "DEFAULT_URL",
    "ApiClient",
    "AsyncApiClient",
    "default_token",
    "default_url",
    "default_verify",
    "resource_path",
]

_is_local = is_local
_unreachable = unreachable


def _verify_arg(verify: bool | str) -> bool | ssl.SSLContext:
    """httpx wants an SSLContext for a CA file."""
    return ssl.create_default_context(cafile=verify) if isinstance(verify, str) else verify


def _raise_for(resp: httpx.Response) -> None:
    err = error_for(resp.status_code, resp.reason_phrase, resp.content)
    if err is not None:
        raise err


def _connection(url: str | None, token: str | None, verify: bool | str) -> dict[str, Any]:
    """What both clients pass to httpx: base URL, auth header, TLS verification."""
    base = (url or default_url()).rstrip("/")
    token = token if token is not None else default_token(base)
    return {
        "base_url": base,
        "headers": {"Authorization": f"Bearer {token}"} if token else {},
        "verify": _verify_arg(default_verify(base) if verify is True else verify),
    }


class ApiClient:
    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        timeout: float = 10.0,
        verify: bool | str = True,
    ) -> None:
        conn = _connection(url, token, verify)
        self.url = str(conn["base_url"])
        self._http = httpx.Client(timeout=timeout, **conn)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kw: Any) -> Any:
        try:
            resp = self._http.request(method, path, **kw)
        except httpx.TransportError as err:
            raise _unreachable(self.url, err) from None
        _raise_for(resp)
        return resp.json() if resp.content else None

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw)

    def apply(self, docs: list[Any]) -> Any:
        return self.request("POST", "/api/v1/apply", json={"resources": docs})

    def put(self, doc: dict[str, Any]) -> Any:
        return self.request("PUT", resource_path(doc["kind"], doc.get("mesh"), doc["name"]), json=doc)


class AsyncApiClient:
    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        timeout: float = 10.0,
        verify: bool | str = True,
    ) -> None:
        conn = _connection(url, token, verify)
        self.url = str(conn["base_url"])
        self._http = httpx.AsyncClient(timeout=timeout, **conn)

    async def close(self) -> None:
        await self._http.aclose()

    async def request(self, method: str, path: str, **kw: Any) -> Any:
        try:
            resp = await self._http.request(method, path, **kw)
        except httpx.TransportError as err:
            raise _unreachable(self.url, err) from None
        _raise_for(resp)
        return resp.json() if resp.content else None

    async def put(self, doc: dict[str, Any]) -> Any:
        return await self.request("PUT", resource_path(doc["kind"], doc.get("mesh"), doc["name"]), json=doc)

    async def delete(self, kind: str, mesh: str | None, name: str) -> Any:
        return await self.request("DELETE", resource_path(kind, mesh, name))
