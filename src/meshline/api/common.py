"""What every client of the control-plane API shares, without an HTTP library: where the
API is, which token and CA to use, and how an error response becomes a MeshlineError.
(The CLI's client uses httpx; the agent has its own small one, :mod:`meshline.agent.http`.)"""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path
from urllib.parse import urlsplit

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
from meshline.core.locations import DEFAULT_API_PORT, default_data_dir

CP_CA_FILE = "cp-ca.pem"  # the CA of the control plane's own TLS certificates, in its data dir
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
    if url is not None and is_local(url):
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
    if url.startswith("https://") and is_local(url):
        for d in (os.environ.get("MESHLINE_DATA_DIR"), os.path.join(os.path.expanduser("~"), ".meshline")):
            path = os.path.join(d, "cp-ca.pem") if d else ""
            if path and os.path.exists(path):
                return path
    return True


def is_local(url: str) -> bool:
    host = urlsplit(url if "://" in url else f"http://{url}").hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def error_for(status: int, reason: str, content: bytes) -> MeshlineError | None:
    """The error an API response stands for (None below 400): its JSON ``message``, and for
    422 the field problems."""
    if status < 400:
        return None
    text = content.decode(errors="replace")
    try:
        body = json.loads(text)
        if not isinstance(body, dict):
            raise ValueError
    except ValueError:
        body = {"message": text.strip() or reason}
    message = str(body.get("message", reason))
    if status == 422:
        problems = [FieldProblem(p.get("path", ""), p.get("message", "")) for p in body.get("problems", [])]
        err = ValidationError(problems or [FieldProblem("", message)])
        err.args = (message,)
        return err
    return _BY_STATUS.get(status, MeshlineError)(message)


def unreachable(url: str, err: Exception) -> Unavailable:
    return Unavailable(
        f"cannot reach the control plane at {url} ({type(err).__name__}); start it with"
        " `meshline control-plane` or point MESHLINE_API / --api at it"
    )


def local_cp_ca_file(api_url: str) -> Path | None:
    """For an agent talking to a control plane on this host: the CA it wrote, if any.

    Only for a loopback API URL: a remote control plane's CA must be given explicitly
    (``--ca-file``), never picked up from whatever is on this disk.
    """
    if not is_local(api_url):
        return None
    path = default_data_dir() / CP_CA_FILE
    return path if path.exists() else None


PLURALS = {"Mesh": "meshes", "Dataplane": "dataplanes"}


def resource_path(kind: str, mesh: str | None, name: str, plural: str | None = None) -> str:
    if kind == "Mesh":
        return f"/api/v1/meshes/{name}"
    plural = plural or PLURALS.get(kind) or kind.lower() + "s"
    return f"/api/v1/meshes/{mesh}/{plural}/{name}"
