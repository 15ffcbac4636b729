"""API client used by the CLI and the dataplane agent (synchronous and asynchronous)."""

from __future__ import annotations

import ipaddress
import os
import ssl
from typing import Any
from urllib.parse import urlsplit

import httpx

from meshline.controlplane.settings import DEFAULT_API_PORT
from meshline.core.errors import (
    Conflict,
    FieldProblem,
    Forbidden,
    MeshlineError,
    NotFound,
    Unauthorized,
    Unavailable,
    ValidationError,
)

DEFAULT_URL = f"http://127.0.0.1:{DEFAULT_API_PORT}"
_BY_STATUS: dict[int, type[MeshlineError]] = {401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict}


def default_url() -> str:
    return os.environ.get("MESHLINE_API", DEFAULT_URL)


def default_token(url: str | None = None) -> str | None:
    """MESHLINE_TOKEN, else MESHLINE_TOKEN_FILE, else (only for a control plane on this host,
    ``url`` on loopback) the admin token it wrote: $MESHLINE_DATA_DIR/admin.token or
    ~/.meshline/admin.token. A local admin token is never sent to a remote URL."""
    token = os.environ.get("MESHLINE_TOKEN")
    if token:
        return token
    path = os.environ.get("MESHLINE_TOKEN_FILE")
    if path and os.path.exists(path):
        return open(path).read().strip() or None
    if url is not None and _is_local(url):
        dirs = [os.environ.get("MESHLINE_DATA_DIR"), os.path.join(os.path.expanduser("~"), ".meshline")]
        for d in dirs:
            admin = os.path.join(d, "admin.token") if d else ""
            if admin and os.path.exists(admin):
                try:
                    return open(admin).read().strip() or None
                except OSError:  # another user's control plane: not ours to use
                    continue
    return None


def default_verify(url: str) -> bool | str:
    """How to check an https control plane: MESHLINE_CA_FILE, else (on this host) the CA the
    local control plane wrote, else the system's CAs."""
    explicit = os.environ.get("MESHLINE_CA_FILE")
    if explicit:
        return explicit
    if url.startswith("https://") and _is_local(url):
        for d in (os.environ.get("MESHLINE_DATA_DIR"), os.path.join(os.path.expanduser("~"), ".meshline")):
            path = os.path.join(d, "cp-ca.pem") if d else ""
            if path and os.path.exists(path):
                return path
    return True


def _verify_arg(verify: bool | str) -> bool | ssl.SSLContext:
    """httpx wants an SSLContext for a CA file."""
    return ssl.create_default_context(cafile=verify) if isinstance(verify, str) else verify


def _is_local(url: str) -> bool:
    host = urlsplit(url if "://" in url else f"http://{url}").hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _raise_for(resp: httpx.Response) -> None:
    if resp.status_code < 400:
        return
    try:
        body = resp.json()
    except ValueError:
        body = {"message": resp.text.strip() or resp.reason_phrase}
    message = str(body.get("message", resp.reason_phrase))
    if resp.status_code == 422:
        problems = [FieldProblem(p.get("path", ""), p.get("message", "")) for p in body.get("problems", [])]
        err = ValidationError(problems or [FieldProblem("", message)])
        err.args = (message,)
        raise err
    raise _BY_STATUS.get(resp.status_code, MeshlineError)(message)


def _unreachable(url: str, err: Exception) -> Unavailable:
    return Unavailable(
        f"cannot reach the control plane at {url} ({type(err).__name__}); start it with"
        " `meshline control-plane` or point MESHLINE_API / --api at it"
    )


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


PLURALS = {"Mesh": "meshes", "Dataplane": "dataplanes"}


def resource_path(kind: str, mesh: str | None, name: str, plural: str | None = None) -> str:
    if kind == "Mesh":
        return f"/api/v1/meshes/{name}"
    plural = plural or PLURALS.get(kind) or kind.lower() + "s"
    return f"/api/v1/meshes/{mesh}/{plural}/{name}"
