"""What every client of the control-plane API shares, without an HTTP library: where the
API is, which token and CA to use, and how an error response becomes a MeshlineError.
(The CLI's client uses httpx; the agent has its own small one, :mod:`meshline.agent.http`.)"""

from __future__ import annotations

import json

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
from meshline.core.locations import DEFAULT_API_PORT, is_local  # noqa: F401 - where clients find it

CP_CA_FILE = "cp-ca.pem"  # the CA of the control plane's own TLS certificates, in its data dir
XDS_HANDSHAKE_FAILURES_PATH = "/api/v1/xds/handshake-failures"  # agents tell why their xDS TLS handshake failed
DEFAULT_URL = f"http://127.0.0.1:{DEFAULT_API_PORT}"
_BY_STATUS: dict[int, type[MeshlineError]] = {401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict}


def default_url() -> str:
    """The API URL the CLI uses with no flags (see :func:`meshline.api.contexts.resolve`)."""
    from meshline.api.contexts import resolve

    return resolve().url


def default_token(url: str | None = None) -> str | None:
    """The token the CLI sends to ``url``: --token / MESHLINE_TOKEN / MESHLINE_TOKEN_FILE,
    else the token file of the context for ``url`` (see :mod:`meshline.api.contexts`)."""
    from meshline.api.contexts import resolve

    return resolve(api=url).token


def default_verify(url: str) -> bool | str:
    """How to check an https control plane: MESHLINE_CA_FILE, else the CA of the context for
    ``url``, else (on this host) the CA a local control plane wrote, else the system's CAs."""
    from meshline.api.contexts import resolve

    return resolve(api=url).verify


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


PLURALS = {"Mesh": "meshes", "Dataplane": "dataplanes"}


def resource_path(kind: str, mesh: str | None, name: str, plural: str | None = None) -> str:
    if kind == "Mesh":
        return f"/api/v1/meshes/{name}"
    plural = plural or PLURALS.get(kind) or kind.lower() + "s"
    return f"/api/v1/meshes/{mesh}/{plural}/{name}"
