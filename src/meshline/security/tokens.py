"""API and dataplane tokens: compact ES256 JWTs signed by the control plane.

A token is ``base64url(header).base64url(claims).base64url(signature)`` (RFC 7515/7519
compact form, ``alg: ES256``), so standard JWT tools can read it. Claims:

* ``jti`` id (also the name of its ``IssuedToken`` record), ``iat``, ``exp``, ``iss``;
* ``kind``: ``admin`` (everything), ``mesh`` (everything inside one mesh),
  ``readonly`` (GETs, optionally one mesh), ``dataplane`` (register its own
  dataplane, get its certificate, connect to xDS as that dataplane), ``zone`` (a zone
  control plane's sync with global, for the zone named in ``zone``, and nothing else);
* ``mesh``, ``service``, ``dp`` (optional dataplane name) scope it.

The signing key is a P-256 key kept sealed in the store (``ControlPlaneKey``
``token-signing``) so every replica verifies every token. A token is valid when its
signature verifies, it has not expired, and its record is not revoked. Revocation is
a store write (``revokedAt`` on the record); every replica keeps the revoked ids in
memory, updated from store change events.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from meshline.api.auth import Principal
from meshline.core.errors import Conflict, FieldProblem, NotFound, Unauthorized, ValidationError
from meshline.core.resource import Resource, ResourceKey
from meshline.core.schema import NAME_HINT, NAME_RE
from meshline.security import crypto
from meshline.security.kinds import TOKEN_KINDS, ControlPlaneKeySpec, IssuedTokenSpec
from meshline.store.base import Change, Store

log = logging.getLogger("meshline.security.tokens")

ISSUER = "meshline"
SIGNING_KEY_NAME = "token-signing"
MIN_TTL = 60.0
MAX_TTL = 10 * 365 * 86400.0
DEFAULT_TTL = 30 * 86400.0
# Keep records of expired tokens this long (so `token list` shows recent expiries).
EXPIRED_RECORD_GRACE = 7 * 86400.0


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Claims:
    id: str
    kind: str
    issued_at: float
    expires_at: float
    mesh: str | None = None
    service: str | None = None
    dataplane: str | None = None
    zone: str | None = None

    def to_payload(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "iss": ISSUER,
            "jti": self.id,
            "kind": self.kind,
            "iat": int(self.issued_at),
            "exp": int(self.expires_at),
        }
        if self.mesh:
            out["mesh"] = self.mesh
        if self.service:
            out["service"] = self.service
        if self.dataplane:
            out["dp"] = self.dataplane
        if self.zone:
            out["zone"] = self.zone
        return out

    @classmethod
    def from_payload(cls, data: dict[str, Any]) -> Claims:
        return cls(
            id=str(data["jti"]),
            kind=str(data["kind"]),
            issued_at=float(data["iat"]),
            expires_at=float(data["exp"]),
            mesh=data.get("mesh"),
            service=data.get("service"),
            dataplane=data.get("dp"),
            zone=data.get("zone"),
        )

    def describe(self) -> str:
        scope = [f"mesh {self.mesh}"] if self.mesh else []
        if self.service:
            scope.append(f"service {self.service}")
        if self.dataplane:
            scope.append(f"dataplane {self.dataplane}")
        if self.zone:
            scope.append(f"zone {self.zone}")
        return f"{self.kind} token {self.id}" + (f" ({', '.join(scope)})" if scope else "")


def check_scope(kind: str, mesh: str | None, service: str | None, dataplane: str | None,
                zone: str | None = None) -> None:
    """What each kind of token must and must not name; errors name the CLI option."""
    problems: list[FieldProblem] = []
    if zone is not None and not NAME_RE.match(zone):
        problems.append(FieldProblem("zone", NAME_HINT))
    if kind == "zone" and not zone:
        problems.append(FieldProblem("zone", "is required for a zone token (e.g. --zone zone-a)"))
    if kind == "zone" and mesh:
        problems.append(FieldProblem("mesh", "a zone token covers every mesh of its zone; remove --mesh"))
    if kind != "zone" and zone:
        problems.append(FieldProblem("zone", f"only zone tokens name a zone; not {kind}"))
    if kind not in TOKEN_KINDS:
        problems.append(FieldProblem("kind", f"must be one of {', '.join(TOKEN_KINDS)}"))
    for field, value in (("mesh", mesh), ("service", service), ("name", dataplane)):
        if value is not None and not NAME_RE.match(value):
            problems.append(FieldProblem(field, NAME_HINT))
    if kind in ("mesh", "dataplane") and not mesh:
        problems.append(FieldProblem("mesh", f"is required for a {kind} token (e.g. --mesh default)"))
    if kind == "dataplane" and not service:
        problems.append(FieldProblem("service", "is required for a dataplane token (e.g. --service orders)"))
    if kind != "dataplane" and (service or dataplane):
        problems.append(
            FieldProblem("service" if service else "name", f"only dataplane tokens name a service; not {kind}")
        )
    if kind == "admin" and mesh:
        problems.append(FieldProblem("mesh", "an admin token covers every mesh; use --kind mesh for one mesh"))
    if problems:
        raise ValidationError(problems, context="cannot issue the token")


def principal_for(claims: Claims) -> Principal:
    name = claims.id
    if claims.kind == "admin":
        return Principal(name)
    if claims.kind == "mesh":
        return Principal(name, mesh=claims.mesh)
    if claims.kind == "readonly":
        return Principal(name, mesh=claims.mesh, read_only=True)
    if claims.kind == "zone":  # read-only for everything: only its zone's sync routes admit it
        return Principal(name, read_only=True, zone=claims.zone or "")
    return Principal(name, mesh=claims.mesh, service=claims.service, dataplane=claims.dataplane)


class TokenCodec:
    """Signs and verifies compact ES256 tokens (no store, no clock of its own)."""

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        self._key = key
        self._pub = key.public_key()
        self.kid = crypto.digest(crypto.public_der(self._pub).hex())

    def encode(self, claims: Claims) -> str:
        header = {"alg": "ES256", "typ": "JWT", "kid": self.kid}
        signing_input = (
            _b64(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + _b64(json.dumps(claims.to_payload(), separators=(",", ":")).encode())
        )
        der = self._key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return signing_input + "." + _b64(r.to_bytes(32, "big") + s.to_bytes(32, "big"))

    def decode(self, token: str) -> Claims:
        """Verify the signature and parse; no expiry or revocation check (see TokenService)."""
        parts = token.strip().split(".")
        if len(parts) != 3 or not all(parts):
            raise Unauthorized("the token is malformed (not a Meshline token); check --token / MESHLINE_TOKEN")
        try:
            header = json.loads(_unb64(parts[0]))
            payload = json.loads(_unb64(parts[1]))
            sig = _unb64(parts[2])
        except (ValueError, UnicodeDecodeError):
            raise Unauthorized(
                "the token is malformed (not a Meshline token); check --token / MESHLINE_TOKEN"
            ) from None
        if not isinstance(header, dict) or header.get("alg") != "ES256" or len(sig) != 64:
            raise Unauthorized("the token is not signed the way Meshline signs tokens (ES256)")
        der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
        try:
            self._pub.verify(der, (parts[0] + "." + parts[1]).encode(), ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise Unauthorized(
                "the token's signature does not verify: it was not issued by this control plane"
                " (or its signing key changed); issue a new one with `meshline token issue`"
            ) from None
        if not isinstance(payload, dict) or payload.get("iss") != ISSUER:
            raise Unauthorized("the token was not issued by a Meshline control plane")
        try:
            return Claims.from_payload(payload)
        except (KeyError, TypeError, ValueError):
            raise Unauthorized("the token's claims are incomplete; issue a new one") from None


@dataclass(frozen=True)
class IssuedToken:
    token: str
    claims: Claims


class TokenService:
    """Issues, verifies and revokes tokens; the revocation list lives in the store."""

    def __init__(self, store: Store, kek: crypto.KeyEncryptor, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.kek = kek
        self.clock = clock
        self._codec: TokenCodec | None = None
        self._revoked: dict[str, float] = {}  # id -> revoked at
        self.on_revoked: list[Callable[[str], None]] = []  # called with a token id once revoked
        self._verified: OrderedDict[str, Claims] = OrderedDict()  # token text -> claims (signature ok)
        self._unsubscribe: Callable[[], None] | None = None
        self._writes: set[asyncio.Task[Resource]] = set()

    @property
    def codec(self) -> TokenCodec:
        if self._codec is None:
            raise RuntimeError("TokenService.start() was not awaited")
        return self._codec

    async def start(self) -> None:
        self._unsubscribe = self.store.subscribe(self._on_change)
        self._codec = TokenCodec(await self._signing_key())
        for r in await self.store.list("IssuedToken"):
            self._track(r)

    async def stop(self) -> None:
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    async def _signing_key(self) -> ec.EllipticCurvePrivateKey:
        key_ref = ResourceKey("ControlPlaneKey", "", SIGNING_KEY_NAME)
        purpose = "control-plane-key:" + SIGNING_KEY_NAME
        for _ in range(3):
            try:
                r = await self.store.get(key_ref)
            except NotFound:
                key = crypto.new_ec_key()
                spec = ControlPlaneKeySpec(
                    key=self.kek.seal(crypto.key_pem(key).encode(), purpose), created_at=self.clock()
                )
                try:
                    await self.store.create(Resource(kind="ControlPlaneKey", name=SIGNING_KEY_NAME, spec=spec))
                except Conflict:
                    continue  # another replica made one first: use theirs
                log.info("created the token signing key")
                return key
            assert isinstance(r.spec, ControlPlaneKeySpec)
            loaded = crypto.load_key(self.kek.open(r.spec.key, purpose))
            assert isinstance(loaded, ec.EllipticCurvePrivateKey)
            return loaded
        raise Conflict("cannot create the token signing key; retry")

    def _on_change(self, change: Change) -> None:
        if change.key.kind != "IssuedToken":
            return
        if change.resource is None:
            self._revoked.pop(change.key.name, None)
        else:
            self._track(change.resource)

    def _track(self, r: Resource) -> None:
        spec = r.spec
        assert isinstance(spec, IssuedTokenSpec)
        if spec.revoked_at is not None:
            newly = r.name not in self._revoked
            self._revoked[r.name] = spec.revoked_at
            if newly:
                for notify in list(self.on_revoked):
                    notify(r.name)
        else:
            self._revoked.pop(r.name, None)

    # -- verify ----------------------------------------------------------------------
    def verify(self, token: str) -> Claims:
        claims = self._verified.get(token)
        if claims is None:
            claims = self.codec.decode(token)
            self._verified[token] = claims
            if len(self._verified) > 10_000:
                self._verified.popitem(last=False)
        now = self.clock()
        if claims.expires_at <= now:
            raise Unauthorized(
                f"{claims.describe()} expired at {crypto.iso(claims.expires_at)};"
                " issue a new one with `meshline token issue`"
            )
        revoked = self._revoked.get(claims.id)
        if revoked is not None:
            raise Unauthorized(
                f"{claims.describe()} was revoked at {crypto.iso(revoked)}; issue a new one with"
                " `meshline token issue`"
            )
        return claims

    def is_revoked(self, token_id: str) -> bool:
        return token_id in self._revoked

    # -- issue / revoke / list -------------------------------------------------------
    async def issue(
        self,
        kind: str,
        mesh: str | None = None,
        service: str | None = None,
        dataplane: str | None = None,
        ttl: float = DEFAULT_TTL,
        description: str | None = None,
        issued_by: str | None = None,
        zone: str | None = None,
    ) -> IssuedToken:
        token, record = self._new(kind, mesh, service, dataplane, ttl, description, issued_by, zone)
        await self.store.create(record)
        log.info("issued %s (expires %s)", token.claims.describe(), crypto.iso(token.claims.expires_at))
        return token

    def issue_nowait(
        self, kind: str, mesh: str | None = None, service: str | None = None, ttl: float = DEFAULT_TTL,
        description: str | None = None,
    ) -> IssuedToken:
        """Issue from synchronous code running on the loop; the record is written in a task."""
        token, record = self._new(kind, mesh, service, None, ttl, description, "control-plane")
        task = asyncio.get_running_loop().create_task(self.store.create(record))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)
        return token

    def _new(
        self,
        kind: str,
        mesh: str | None,
        service: str | None,
        dataplane: str | None,
        ttl: float,
        description: str | None,
        issued_by: str | None,
        zone: str | None = None,
    ) -> tuple[IssuedToken, Resource]:
        check_scope(kind, mesh, service, dataplane, zone)
        if not MIN_TTL <= ttl <= MAX_TTL:
            raise ValidationError(
                [FieldProblem("ttl", "must be between 1m and 87600h (10 years)")], context="cannot issue the token"
            )
        now = self.clock()
        claims = Claims(
            id=secrets.token_hex(8),
            kind=kind,
            issued_at=now,
            expires_at=now + ttl,
            mesh=mesh,
            service=service,
            dataplane=dataplane,
            zone=zone,
        )
        spec = IssuedTokenSpec(
            kind=kind,  # type: ignore[arg-type]
            mesh=mesh,
            service=service,
            dataplane=dataplane,
            zone=zone,
            issued_at=claims.issued_at,
            expires_at=claims.expires_at,
            description=description,
            issued_by=issued_by,
        )
        record = Resource(kind="IssuedToken", name=claims.id, spec=spec)
        return IssuedToken(self.codec.encode(claims), claims), record

    async def revoke(self, token_id: str, by: str | None = None) -> Resource:
        if not NAME_RE.match(token_id):
            raise NotFound(f"no token with id '{token_id}'; see `meshline token list`")
        try:
            r = await self.store.get(ResourceKey("IssuedToken", "", token_id))
        except NotFound:
            raise NotFound(f"no token with id '{token_id}'; see `meshline token list`") from None
        spec = r.spec
        assert isinstance(spec, IssuedTokenSpec)
        if spec.revoked_at is not None:
            return r
        updated = Resource(
            kind="IssuedToken",
            name=token_id,
            spec=spec.model_copy(update={"revoked_at": self.clock(), "revoked_by": by}),
        )
        stored = await self.store.update(updated, r.version)
        self._track(stored)
        log.warning("revoked token %s (%s)", token_id, spec.kind)
        return stored

    async def records(self) -> list[Resource]:
        return await self.store.list("IssuedToken")

    async def prune(self) -> int:
        """Forget records of tokens expired for a while (an expired token is refused anyway)."""
        now = self.clock()
        n = 0
        for r in await self.records():
            spec = r.spec
            assert isinstance(spec, IssuedTokenSpec)
            if spec.expires_at + EXPIRED_RECORD_GRACE < now:
                with contextlib.suppress(NotFound, Conflict):
                    await self.store.delete(r.key, r.version)
                    n += 1
        return n


def record_json(r: Resource, now: float | None = None) -> dict[str, Any]:
    spec = r.spec
    assert isinstance(spec, IssuedTokenSpec)
    now = time.time() if now is None else now
    state = "revoked" if spec.revoked_at is not None else "expired" if spec.expires_at <= now else "active"
    return {"id": r.name, "state": state, **spec.to_json()}
