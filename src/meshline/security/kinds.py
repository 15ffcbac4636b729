"""Store kinds the security subsystem keeps for itself (global, never written by users).

They live in the store so every control-plane replica sees the same state:

* ``IssuedToken``: one record per token issued (id, scope, expiry); ``revokedAt`` set
  means revoked. Records are the revocation list every replica checks, and what
  ``meshline token list`` shows. The token text itself is never stored.
* ``MeshCA``: one per mesh (name = mesh name): its CAs over time, each with its
  certificate, the root it chains to, its private key *sealed* with the
  key-encryption key, when it starts signing, and an upper bound on the expiry of
  every leaf it signed (see :mod:`meshline.security.ca` for how rotation uses them).
* ``ControlPlaneKey``: the token signing key and the control-plane CA (xDS TLS),
  sealed the same way, shared by every replica.

They are global kinds, so the resource API does not serve them (it serves Mesh and
mesh-scoped kinds only) and a context validator refuses them in ``apply``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from meshline.core.resource import KindInfo, Resource
from meshline.core.schema import Spec

TokenKind = Literal["admin", "mesh", "readonly", "dataplane", "zone"]
TOKEN_KINDS: tuple[str, ...] = ("admin", "mesh", "readonly", "dataplane", "zone")


class IssuedTokenSpec(Spec):
    kind: TokenKind
    mesh: str | None = None
    service: str | None = None
    dataplane: str | None = None
    zone: str | None = None  # a zone token: the zone control plane it authenticates to global
    issued_at: float
    expires_at: float
    description: str | None = None
    issued_by: str | None = None
    revoked_at: float | None = None
    revoked_by: str | None = None


class CAEntry(Spec):
    id: str  # fingerprint of ``cert``
    source: Literal["builtin", "provided"]
    cert: str  # the signing CA certificate (PEM)
    chain: str = ""  # certificates between ``cert`` and ``root`` (PEM), sent with every leaf
    root: str  # the self-signed trust anchor (PEM); may be ``cert`` itself
    key: str  # the signing key, sealed (see crypto.KeyEncryptor)
    added_at: float
    active_from: float  # signs leaves from this time on; its root is trusted from added_at
    issued_until: float = 0.0  # no leaf it signed expires after this


class MeshCASpec(Spec):
    entries: list[CAEntry] = Field(default_factory=list)


class ControlPlaneKeySpec(Spec):
    key: str  # sealed PEM private key
    cert: str | None = None  # PEM certificate (for a CA)
    created_at: float


def _token_kind(r: Resource) -> str:
    assert isinstance(r.spec, IssuedTokenSpec)
    return r.spec.kind


ISSUED_TOKEN = KindInfo(
    kind="IssuedToken",
    plural="issuedtokens",
    spec=IssuedTokenSpec,
    summary="(internal) a token the control plane issued; revokedAt set means revoked",
    mesh_scoped=False,
    internal=True,
    columns={"TOKEN KIND": _token_kind},
)
MESH_CA = KindInfo(
    kind="MeshCA",
    plural="meshcas",
    spec=MeshCASpec,
    summary="(internal) a mesh's certificate authorities over time, private keys sealed",
    mesh_scoped=False,
    internal=True,
)
CONTROL_PLANE_KEY = KindInfo(
    kind="ControlPlaneKey",
    plural="controlplanekeys",
    spec=ControlPlaneKeySpec,
    summary="(internal) the token signing key and the control-plane CA, sealed",
    mesh_scoped=False,
    internal=True,
)
KINDS: tuple[KindInfo, ...] = (ISSUED_TOKEN, MESH_CA, CONTROL_PLANE_KEY)
INTERNAL: frozenset[str] = frozenset(k.kind for k in KINDS)
