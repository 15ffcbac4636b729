"""API clients on httpx, used by the CLI and tests (synchronous and asynchronous)."""

from __future__ import annotations

import ssl
from dataclasses import replace
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
)
from meshline.api.contexts import Connection, resolve
from meshline.core.errors import MeshlineError, Unauthorized, Unavailable

__all__ = [
    "DEFAULT_URL",
    "ApiClient",
    "connect_args",
    "AsyncApiClient",
    "default_token",
    "default_url",
    "default_verify",
    "resource_path",
]

_is_local = is_local


def _verify_arg(verify: bool | str) -> bool | ssl.SSLContext:
    """httpx wants an SSLContext for a CA file."""
    return ssl.create_default_context(cafile=verify) if isinstance(verify, str) else verify


def _raise_for(resp: httpx.Response) -> None:
    err = error_for(resp.status_code, resp.reason_phrase, resp.content)
    if err is not None:
        raise err


def connect_args(
    url: str | None, token: str | None, verify: bool | str, context: str | None = None
) -> tuple[Connection, dict[str, Any]]:
    """Which control plane, token and CA (see :mod:`meshline.api.contexts`), and what both
    clients pass to httpx for them. ``token=""``: send none."""
    conn = resolve(api=url, token=token or None, context=context)
    if token == "":
        conn = replace(conn, token=None, token_source="no token")
    if verify is not True:
        conn = replace(conn, verify=verify)
    return conn, {
        "base_url": conn.url,
        "headers": {"Authorization": f"Bearer {conn.token}"} if conn.token else {},
        "verify": _verify_arg(conn.verify),
    }


def explained(err: MeshlineError, conn: Connection) -> MeshlineError:
    """A refused token says which control plane, which token and what would fix it."""
    if isinstance(err, Unauthorized):
        return Unauthorized(f"{err} [{conn.describe()}]; {conn.unauthorized_fix()}")
    return err


def unreachable_for(conn: Connection, err: Exception) -> MeshlineError:
    return Unavailable(
        f"cannot reach the control plane at {conn.url} ({type(err).__name__}; chosen by {conn.url_source});"
        f" {conn.unreachable_fix()}"
    )


class ApiClient:
    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        timeout: float = 10.0,
        verify: bool | str = True,
        context: str | None = None,
    ) -> None:
        self.connection, conn = connect_args(url, token, verify, context)
        self.url = self.connection.url
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
            raise unreachable_for(self.connection, err) from None
        try:
            _raise_for(resp)
        except MeshlineError as err:
            raise explained(err, self.connection) from None
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
        context: str | None = None,
    ) -> None:
        self.connection, conn = connect_args(url, token, verify, context)
        self.url = self.connection.url
        self._http = httpx.AsyncClient(timeout=timeout, **conn)

    async def close(self) -> None:
        await self._http.aclose()

    async def request(self, method: str, path: str, **kw: Any) -> Any:
        try:
            resp = await self._http.request(method, path, **kw)
        except httpx.TransportError as err:
            raise unreachable_for(self.connection, err) from None
        try:
            _raise_for(resp)
        except MeshlineError as err:
            raise explained(err, self.connection) from None
        return resp.json() if resp.content else None

    async def put(self, doc: dict[str, Any]) -> Any:
        return await self.request("PUT", resource_path(doc["kind"], doc.get("mesh"), doc["name"]), json=doc)

    async def delete(self, kind: str, mesh: str | None, name: str) -> Any:
        return await self.request("DELETE", resource_path(kind, mesh, name))
