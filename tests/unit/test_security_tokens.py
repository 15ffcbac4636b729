"""Tokens: signing, expiry, garbage, revocation seen by every replica, and what each kind may do."""

from __future__ import annotations

import base64
import json

import pytest

from meshline.api.auth import Principal
from meshline.core.dataplane import DataplaneSpec
from meshline.core.errors import Forbidden, Unauthorized, ValidationError
from meshline.core.resource import Resource
from meshline.core.schema import parse_spec
from meshline.kinds import default_kinds
from meshline.security import crypto
from meshline.security.tokens import Claims, TokenCodec, TokenService, check_scope, principal_for
from meshline.security.xds_auth import check_node
from meshline.store.sqlite import SQLiteStore


class Clock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
async def store() -> SQLiteStore:
    s = SQLiteStore(default_kinds(), ":memory:")
    await s.start()
    yield s  # type: ignore[misc]
    await s.close()


@pytest.fixture
async def service(store: SQLiteStore) -> TokenService:
    svc = TokenService(store, crypto.KeyEncryptor.generate(), clock=Clock())
    await svc.start()
    yield svc  # type: ignore[misc]
    await svc.stop()


def claims(**kw: object) -> Claims:
    base: dict[str, object] = {"id": "abc", "kind": "admin", "issued_at": 1.0, "expires_at": 2e9}
    base.update(kw)
    return Claims(**base)  # type: ignore[arg-type]


def test_codec_round_trip_and_jwt_shape() -> None:
    codec = TokenCodec(crypto.new_ec_key())
    c = claims(kind="dataplane", mesh="default", service="orders", dataplane="orders-1")
    token = codec.encode(c)
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header["alg"] == "ES256" and header["typ"] == "JWT"
    assert codec.decode(token) == c


@pytest.mark.parametrize(
    "garbage",
    ["", "abc", "a.b", "a.b.c", "!!!.???.***", "eyJhbGciOiJub25lIn0.eyJpc3MiOiJtZXNobGluZSJ9.", "x" * 500],
)
def test_garbage_tokens_are_401(garbage: str) -> None:
    codec = TokenCodec(crypto.new_ec_key())
    with pytest.raises(Unauthorized):
        codec.decode(garbage)


def test_tampered_or_foreign_tokens_do_not_verify() -> None:
    codec = TokenCodec(crypto.new_ec_key())
    token = codec.encode(claims(kind="readonly"))
    head, payload, sig = token.split(".")
    forged = base64.urlsafe_b64encode(
        json.dumps(json.loads(base64.urlsafe_b64decode(payload + "==")) | {"kind": "admin"}).encode()
    ).rstrip(b"=").decode()
    with pytest.raises(Unauthorized, match="signature does not verify"):
        codec.decode(f"{head}.{forged}.{sig}")
    other = TokenCodec(crypto.new_ec_key())
    with pytest.raises(Unauthorized, match="not issued by this control plane"):
        other.decode(token)


async def test_expired_token_is_refused(service: TokenService) -> None:
    issued = await service.issue("admin", ttl=60)
    assert service.verify(issued.token).kind == "admin"
    service.clock.t += 61  # type: ignore[attr-defined]
    with pytest.raises(Unauthorized, match="expired"):
        service.verify(issued.token)


async def test_revocation_is_seen_by_every_replica(store: SQLiteStore) -> None:
    kek = crypto.KeyEncryptor.generate()
    a = TokenService(store, kek)
    b = TokenService(store, kek)  # a second control-plane replica on the same store
    await a.start()
    await b.start()
    issued = await a.issue("dataplane", mesh="default", service="orders")
    assert b.verify(issued.token).service == "orders"  # same signing key from the store
    await a.revoke(issued.claims.id, by="test")
    for svc in (a, b):
        with pytest.raises(Unauthorized, match="revoked"):
            svc.verify(issued.token)
    # and a replica started later loads the list from the store
    c = TokenService(store, kek)
    await c.start()
    with pytest.raises(Unauthorized, match="revoked"):
        c.verify(issued.token)
    for svc in (a, b, c):
        await svc.stop()


async def test_token_records_never_hold_the_token(service: TokenService, store: SQLiteStore) -> None:
    issued = await service.issue("mesh", mesh="default", description="ci")
    [record] = [r for r in await store.list("IssuedToken") if r.name == issued.claims.id]
    assert issued.token not in json.dumps(record.to_json())
    assert issued.token.split(".")[2] not in json.dumps(record.to_json())


@pytest.mark.parametrize(
    ("kind", "mesh", "service", "dataplane", "field"),
    [
        ("dataplane", "default", None, None, "service"),
        ("dataplane", None, "orders", None, "mesh"),
        ("mesh", None, None, None, "mesh"),
        ("admin", "default", None, None, "mesh"),
        ("readonly", None, "orders", None, "service"),
        ("root", None, None, None, "kind"),
        ("dataplane", "default", "Orders!", None, "service"),
    ],
)
def test_scope_rules(kind: str, mesh: str | None, service: str | None, dataplane: str | None, field: str) -> None:
    with pytest.raises(ValidationError) as err:
        check_scope(kind, mesh, service, dataplane)
    assert field in [p.path for p in err.value.problems]


async def test_ttl_bounds(service: TokenService) -> None:
    with pytest.raises(ValidationError, match="ttl"):
        await service.issue("admin", ttl=10)


def test_principals_enforce_scope() -> None:
    admin = principal_for(claims(kind="admin"))
    admin.check_write(None, "Mesh")
    admin.check_write("other", "HTTPRoute")

    ro = principal_for(claims(kind="readonly"))
    ro.check_read("default")
    with pytest.raises(Forbidden, match="read-only"):
        ro.check_write("default", "HTTPRoute")

    mesh = principal_for(claims(kind="mesh", mesh="default"))
    mesh.check_write("default", "HTTPRoute")
    with pytest.raises(Forbidden, match="limited to mesh"):
        mesh.check_read("other")
    with pytest.raises(Forbidden, match="global"):
        mesh.check_write(None, "Mesh")

    dp = principal_for(claims(kind="dataplane", mesh="default", service="orders", dataplane="orders-1"))
    assert isinstance(dp, Principal)
    dp.check_write("default", "Dataplane", ["orders"], "orders-1")
    with pytest.raises(Forbidden, match="only register dataplanes"):
        dp.check_write("default", "HTTPRoute")
    with pytest.raises(Forbidden, match="service 'orders'"):
        dp.check_write("default", "Dataplane", ["payments"], "orders-1")
    with pytest.raises(Forbidden, match="dataplane 'orders-1'"):
        dp.check_write("default", "Dataplane", ["orders"], "orders-2")


def _dp(name: str, service: str) -> Resource:
    spec = parse_spec(
        DataplaneSpec, {"address": "10.0.0.1", "inbound": [{"port": 8080, "servicePort": 18080, "tags": {"service": service}}]}
    )
    return Resource(kind="Dataplane", mesh="default", name=name, spec=spec)


def test_xds_node_rules() -> None:
    registered = {("default", "orders-1"): _dp("orders-1", "orders"), ("default", "pay-1"): _dp("pay-1", "payments")}

    def lookup(mesh: str, name: str) -> Resource | None:
        return registered.get((mesh, name))

    dp = claims(kind="dataplane", mesh="default", service="orders")
    assert check_node(dp, "default.orders-1", lookup) is None
    assert "serves payments" in (check_node(dp, "default.pay-1", lookup) or "")
    assert "not registered" in (check_node(dp, "default.orders-9", lookup) or "")
    assert "mesh 'default', not 'other'" in (check_node(dp, "other.orders-1", lookup) or "")
    pinned = claims(kind="dataplane", mesh="default", service="orders", dataplane="orders-2")
    assert "not 'orders-1'" in (check_node(pinned, "default.orders-1", lookup) or "")
    assert "read-only" in (check_node(claims(kind="readonly"), "default.orders-1", lookup) or "")
    assert check_node(claims(kind="mesh", mesh="default"), "default.pay-1", lookup) is None
    assert check_node(claims(kind="mesh", mesh="default"), "other.x", lookup) is not None
    assert check_node(claims(kind="admin"), "other.x", lookup) is None
    assert check_node(claims(kind="admin"), "no-dot", lookup) is not None
