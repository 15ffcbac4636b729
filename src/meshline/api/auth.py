"""Who is calling the API. The default (local demo) lets everyone in as admin;
``meshline.security`` provides token-based authentication."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from aiohttp import web

from meshline.core.errors import Forbidden


@dataclass(frozen=True)
class Principal:
    name: str
    mesh: str | None = None  # None: every mesh
    read_only: bool = False
    # A dataplane token: may register/update only its own dataplane of this service.
    service: str | None = None
    dataplane: str | None = None
    # A zone token (multi-zone): only its zone's sync routes on global admit it.
    zone: str | None = None

    def check_read(self, mesh: str | None) -> None:
        if self.mesh is not None and mesh is not None and mesh != self.mesh:
            raise Forbidden(f"token '{self.name}' is limited to mesh '{self.mesh}'")

    def check_write(
        self,
        mesh: str | None,
        kind: str = "",
        spec_services: list[str] | None = None,
        name: str | None = None,
    ) -> None:
        self.check_read(mesh)
        if self.read_only:
            raise Forbidden(
                f"token '{self.name}' is read-only; use an admin or mesh token to change resources"
            )
        if self.service is not None:
            if kind != "Dataplane":
                raise Forbidden(f"dataplane token '{self.name}' may only register dataplanes")
            if spec_services is not None and any(s != self.service for s in spec_services):
                raise Forbidden(
                    f"dataplane token '{self.name}' is for service '{self.service}', not {', '.join(spec_services)};"
                    " issue a token for this service with `meshline token issue`"
                )
            if self.dataplane is not None and name is not None and name != self.dataplane:
                raise Forbidden(
                    f"dataplane token '{self.name}' is for dataplane '{self.dataplane}', not '{name}'"
                )
        if mesh is None and self.mesh is not None:
            raise Forbidden(f"token '{self.name}' cannot change global resources")


ADMIN = Principal("local-admin")


class Authenticator(Protocol):
    async def authenticate(self, request: web.Request) -> Principal: ...


class AllowAll:
    """Local demo only: every caller is admin."""

    async def authenticate(self, request: web.Request) -> Principal:
        return ADMIN
