"""Exception hierarchy. Every message is one line that says what is wrong and what to do."""

from __future__ import annotations

from dataclasses import dataclass


class MeshlineError(Exception):
    """Base of every error Meshline raises on purpose. ``str(err)`` is user-facing."""

    status = 400  # HTTP status the API maps this error to

    def to_json(self) -> dict[str, object]:
        return {"error": type(self).__name__, "message": str(self)}


@dataclass(frozen=True)
class FieldProblem:
    path: str  # e.g. "spec.inbound[0].port"
    message: str  # e.g. "must be 1-65535"

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ValidationError(MeshlineError):
    status = 422

    def __init__(self, problems: list[FieldProblem], *, context: str = "") -> None:
        self.problems = problems
        self.context = context
        head = f"{context}: " if context else ""
        super().__init__(head + "; ".join(str(p) for p in problems))

    def to_json(self) -> dict[str, object]:
        return {
            "error": "ValidationError",
            "message": str(self),
            "problems": [{"path": p.path, "message": p.message} for p in self.problems],
        }


class NotFound(MeshlineError):
    status = 404


class Conflict(MeshlineError):
    """A write lost a race (stale version) or would duplicate an existing resource."""

    status = 409


class Unauthorized(MeshlineError):
    status = 401


class Forbidden(MeshlineError):
    status = 403


class Unavailable(MeshlineError):
    """A dependency (control plane, database, Envoy) could not be reached."""

    status = 503


class ClientGone(MeshlineError):
    """The client hung up while its request was being served; its work was stopped (and a
    write rolled back). 499 (as nginx logs it): nobody receives this response."""

    status = 499


class TooLarge(MeshlineError):
    """A request over a documented bound (one apply's documents or bytes): 413."""

    status = 413
