"""The per-mesh CA: provided-CA validation, CSR checks, leaf certificates, and rotation over time."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshline.core.errors import Forbidden, ValidationError
from meshline.core.mesh import MeshSpec
from meshline.core.resource import Resource, ResourceKey
from meshline.core.schema import parse_spec
from meshline.kinds import default_kinds
from meshline.security import crypto
from meshline.security.ca import (
    RETIRE_MARGIN,
    CAManager,
    CSRInvalid,
    add_entry,
    bundle_at,
    check_csr,
    new_builtin,
    next_transition,
    parse_provided,
    prune,
    sign_leaf,
    signer_at,
    spiffe_id,
)
from meshline.security.kinds import CAEntry, MeshCASpec
from meshline.security.workload_identity import make_csr
from meshline.store.sqlite import SQLiteStore

ID = "spiffe://meshline.local/default/orders"


def csr_for(key: crypto.PrivateKey | None = None, *sans: x509.GeneralName) -> str:
    key = key or crypto.new_ec_key()
    b = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "whatever")])
    )
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def make_ca(
    name: str = "Test Root",
    issuer: tuple[x509.Certificate, crypto.PrivateKey] | None = None,
    ca: bool = True,
    days: int = 365,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = crypto.new_ec_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = crypto.utcnow()
    signer_cert, signer_key = issuer if issuer else (None, key)
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(signer_cert.subject if signer_cert else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    return b.sign(signer_key, hashes.SHA256()), key


def pem(*certs: x509.Certificate) -> str:
    return "".join(crypto.cert_pem(c) for c in certs)


# -- leaves -----------------------------------------------------------------------------


def test_leaf_has_only_the_spiffe_id_and_the_mesh_lifetime() -> None:
    ca = new_builtin("default")
    csr = check_csr(csr_for(), ID)
    now = crypto.utcnow()
    leaf = sign_leaf(csr, ID, ca, dt.timedelta(hours=24), now)

    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical  # the subject is empty
    assert list(san.value) == [x509.UniformResourceIdentifier(ID)]
    assert leaf.subject == x509.Name([])  # the CSR's CN was not copied
    assert abs((leaf.not_valid_after_utc - now) - dt.timedelta(hours=24)) < dt.timedelta(seconds=1)
    ku = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and not ku.key_cert_sign and not ku.key_encipherment
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    leaf.verify_directly_issued_by(ca.cert)


def test_leaf_lifetime_follows_the_mesh_and_never_outlives_its_ca() -> None:
    ca = new_builtin("default")
    now = crypto.utcnow()
    short = sign_leaf(check_csr(csr_for(), ID), ID, ca, dt.timedelta(minutes=1), now)
    assert short.not_valid_after_utc - now == dt.timedelta(minutes=1) - dt.timedelta(microseconds=now.microsecond)
    cert, key = make_ca(days=2)
    small = parse_provided(pem(cert), crypto.key_pem(key))
    long = sign_leaf(check_csr(csr_for(), ID), ID, small, dt.timedelta(days=30), now)
    assert long.not_valid_after_utc == cert.not_valid_after_utc


def test_cert_lifetime_has_a_minimum_of_one_minute() -> None:
    with pytest.raises(ValidationError) as err:
        parse_spec(MeshSpec, {"mtls": {"certLifetime": "30s"}})
    assert err.value.problems[0].path == "spec.mtls.certLifetime"
    assert parse_spec(MeshSpec, {"mtls": {"certLifetime": "1m"}}).mtls.cert_lifetime == dt.timedelta(minutes=1)


def test_spiffe_id_format_matches_what_sidecars_expect() -> None:
    from meshline.render.mesh_snapshot import MeshSnapshot

    mesh = Resource(kind="Mesh", name="prod", spec=MeshSpec(trust_domain="example.org"))
    snap = MeshSnapshot.build(mesh, [], 1)
    assert spiffe_id("example.org", "prod", "orders") == snap.identity("orders")


# -- CSRs -------------------------------------------------------------------------------


def test_csr_for_another_identity_is_forbidden() -> None:
    with pytest.raises(Forbidden, match="spiffe://meshline.local/default/payments"):
        check_csr(csr_for(None, x509.UniformResourceIdentifier("spiffe://meshline.local/default/payments")), ID)
    with pytest.raises(Forbidden, match="orders.example.com"):
        check_csr(csr_for(None, x509.DNSName("orders.example.com")), ID)
    # asking for exactly its own identity, or nothing, is fine
    check_csr(csr_for(None, x509.UniformResourceIdentifier(ID)), ID)
    check_csr(make_csr(crypto.new_ec_key(), ID), ID)
    check_csr(make_csr(crypto.new_ec_key()), ID)


@pytest.mark.parametrize(
    "bad",
    [
        None,
        "",
        "garbage",
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
        42,
    ],
)
def test_malformed_csr_is_422(bad: object) -> None:
    with pytest.raises(CSRInvalid) as err:
        check_csr(bad, ID)
    assert err.value.status == 422
    assert err.value.problems[0].path == "csr"


def test_csr_with_a_bad_signature_or_weak_key_is_422() -> None:
    good = x509.load_pem_x509_csr(csr_for().encode())
    der = bytearray(good.public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0xFF  # inside the signature
    tampered = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM).decode()
    with pytest.raises(CSRInvalid, match="signature"):
        check_csr(tampered, ID)
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(CSRInvalid, match="1024"):
        check_csr(csr_for(weak), ID)
    with pytest.raises(CSRInvalid, match="P-256"):
        check_csr(csr_for(ec.generate_private_key(ec.SECP256K1())), ID)


# -- provided CAs -----------------------------------------------------------------------


def test_provided_root_is_accepted() -> None:
    cert, key = make_ca()
    m = parse_provided(pem(cert), crypto.key_pem(key))
    assert m.root == cert and m.chain == () and m.id == crypto.fingerprint(cert)


def test_provided_intermediate_with_its_chain() -> None:
    root, root_key = make_ca("Root")
    inter, inter_key = make_ca("Intermediate", issuer=(root, root_key))
    m = parse_provided(pem(inter, root), crypto.key_pem(inter_key))
    assert m.cert == inter and m.root == root and m.chain == ()
    leaf = sign_leaf(check_csr(csr_for(), ID), ID, m, dt.timedelta(hours=1))
    leaf.verify_directly_issued_by(inter)
    # without the root there is nothing for peers to trust
    with pytest.raises(ValidationError) as err:
        parse_provided(pem(inter), crypto.key_pem(inter_key))
    assert err.value.problems[0].path == "spec.mtls.ca.cert"
    assert "self-signed root" in err.value.problems[0].message


def test_provided_ca_with_a_mismatched_key_names_the_key_field() -> None:
    cert, _ = make_ca()
    _, other_key = make_ca("Other")
    with pytest.raises(ValidationError) as err:
        parse_provided(pem(cert), crypto.key_pem(other_key))
    [problem] = err.value.problems
    assert problem.path == "spec.mtls.ca.key"
    assert "does not match" in problem.message and "provide the private key" in problem.message


@pytest.mark.parametrize(
    ("cert", "key", "path", "words"),
    [
        (None, "k", "spec.mtls.ca.cert", "is required"),
        ("c", None, "spec.mtls.ca.key", "is required"),
        ("not pem", "k", "spec.mtls.ca.cert", "PEM"),
    ],
)
def test_provided_ca_missing_or_garbage(cert: str | None, key: str | None, path: str, words: str) -> None:
    real_key = crypto.key_pem(crypto.new_ec_key())
    with pytest.raises(ValidationError) as err:
        parse_provided(cert if cert != "c" else pem(make_ca()[0]), real_key if key == "k" else key)
    assert any(p.path == path and words in p.message for p in err.value.problems), err.value.problems


def test_provided_leaf_or_expired_certificate_is_refused() -> None:
    leaf, key = make_ca("Not a CA", ca=False)
    with pytest.raises(ValidationError, match="not a CA certificate"):
        parse_provided(pem(leaf), crypto.key_pem(key))
    old, old_key = make_ca("Old", days=-1)
    with pytest.raises(ValidationError, match="expired"):
        parse_provided(pem(old), crypto.key_pem(old_key))
    with pytest.raises(ValidationError) as err:
        parse_provided(pem(make_ca()[0]), "-----BEGIN PRIVATE KEY-----\nxx\n-----END PRIVATE KEY-----\n")
    assert err.value.problems[0].path == "spec.mtls.ca.key"


# -- rotation, as pure functions of the clock ------------------------------------------


def entry(name: str, added: float, active: float, issued_until: float = 0.0) -> CAEntry:
    return CAEntry(
        id=name, source="builtin", cert=name, root=f"root-{name}", key="", added_at=added,
        active_from=active, issued_until=issued_until,
    )


def test_new_root_is_trusted_before_it_signs_and_the_old_one_until_its_leaves_expire() -> None:
    lifetime = 3600.0
    first = add_entry([], entry("a", 0, 0), now=0, propagation=30)
    assert first[0].active_from == 0  # nothing signed yet: no need to wait
    # a signed leaf raised issued_until; then a rotation at t=1000
    first = [first[0].model_copy(update={"issued_until": 1000 + lifetime})]
    both = add_entry(first, entry("b", 0, 0), now=1000, propagation=30)
    assert [e.id for e in both] == ["a", "b"]
    assert both[1].active_from == 1030
    # from the moment of the rotation the bundle holds both roots, still signed by a
    assert bundle_at(both, 1000) == ["root-a\n", "root-b\n"]
    assert signer_at(both, 1029).id == "a"  # type: ignore[union-attr]
    assert signer_at(both, 1030).id == "b"  # type: ignore[union-attr]
    # the old root stays for its leaves' lifetime (+ margin), then goes
    assert bundle_at(both, 1000 + lifetime + RETIRE_MARGIN - 1) == ["root-a\n", "root-b\n"]
    assert bundle_at(both, 1000 + lifetime + RETIRE_MARGIN + 1) == ["root-b\n"]
    assert next_transition(both, 1000) == 1030
    assert next_transition(both, 1031) == 1000 + lifetime + RETIRE_MARGIN
    assert [e.id for e in prune(both, 1000 + lifetime + RETIRE_MARGIN + 1)] == ["b"]
    assert [e.id for e in prune(both, 1100)] == ["a", "b"]


def test_a_second_rotation_replaces_a_pending_ca() -> None:
    base = [entry("a", 0, 0, issued_until=5000)]
    one = add_entry(base, entry("b", 0, 0), now=100, propagation=30)
    two = add_entry(one, entry("c", 0, 0), now=110, propagation=30)
    assert [e.id for e in two] == ["a", "c"]  # b never signed anything
    assert signer_at(two, 139).id == "a"  # type: ignore[union-attr]


# -- the store-backed manager -----------------------------------------------------------


class Clock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
async def store() -> SQLiteStore:
    s = SQLiteStore(default_kinds(), ":memory:")
    await s.start()
    await s.create(Resource(kind="Mesh", name="default", spec=MeshSpec()))
    yield s  # type: ignore[misc]
    await s.close()


async def test_builtin_ca_rotation_keeps_old_and_new_roots_for_a_cert_lifetime(store: SQLiteStore) -> None:
    clock = Clock()
    kek = crypto.KeyEncryptor.generate()
    ca = CAManager(store, kek, propagation=30, clock=clock)
    await ca.start()
    lifetime = dt.timedelta(hours=1)
    csr = check_csr(csr_for(), ID)

    first = await ca.sign("default", csr, ID, lifetime, "orders-1")
    roots, version, signer = await ca.bundle("default")
    assert len(roots) == 1 and signer == first.ca_id
    # the bound was raised (and stored) before the leaf was signed
    [e] = ca.entries("default")
    assert e.issued_until >= first.expires_at

    new = await ca.rotate("default")
    roots, version2, signer = await ca.bundle("default")
    assert len(roots) == 2 and version2 != version
    assert signer == first.ca_id  # new root trusted first, signs only after propagation
    assert (await ca.sign("default", csr, ID, lifetime)).ca_id == first.ca_id

    clock.t += 31
    after = await ca.sign("default", csr, ID, lifetime)
    assert after.ca_id == new.id
    assert len(x509.load_pem_x509_certificates(after.trust_bundle.encode())) == 2
    x509.load_pem_x509_certificates(after.cert_chain.encode())[0].verify_directly_issued_by(
        x509.load_pem_x509_certificate(new.cert.encode())
    )

    # old root kept while a leaf it signed may live, then dropped and pruned
    clock.t = first.expires_at + RETIRE_MARGIN - 1
    assert len((await ca.bundle("default"))[0]) == 2
    clock.t = first.expires_at + 2 * 3600 + RETIRE_MARGIN + 1  # the bound was raised generously
    assert len((await ca.bundle("default"))[0]) == 1
    await ca.prune("default")
    assert [e.id for e in ca.entries("default")] == [new.id]
    await ca.stop()


async def test_ca_private_keys_are_sealed_in_the_store(store: SQLiteStore) -> None:
    kek = crypto.KeyEncryptor.generate()
    ca = CAManager(store, kek)
    await ca.start()
    await ca.ensure("default")
    stored = await store.get(ResourceKey("MeshCA", "", "default"))
    text = json.dumps(stored.to_json())
    assert "PRIVATE KEY" not in text
    assert isinstance(stored.spec, MeshCASpec)
    # another replica with the same KEK can sign; one with another KEK gets a clear error
    twin = CAManager(store, kek)
    await twin.start()
    await twin.sign("default", check_csr(csr_for(), ID), ID, dt.timedelta(hours=1))
    stranger = CAManager(store, crypto.KeyEncryptor.generate())
    await stranger.start()
    with pytest.raises(crypto.SecretError, match="key-encryption key"):
        await stranger.sign("default", check_csr(csr_for(), ID), ID, dt.timedelta(hours=1))
    for m in (ca, twin, stranger):
        await m.stop()


async def test_switching_to_a_provided_ca_rotates_with_both_roots_trusted(store: SQLiteStore) -> None:
    clock = Clock()
    ca = CAManager(store, crypto.KeyEncryptor.generate(), propagation=60, clock=clock)
    await ca.start()
    csr = check_csr(csr_for(), ID)
    old = await ca.sign("default", csr, ID, dt.timedelta(hours=1))
    cert, key = make_ca("Corp CA")
    mesh = Resource(
        kind="Mesh",
        name="default",
        spec=parse_spec(
            MeshSpec, {"mtls": {"ca": {"type": "provided", "cert": pem(cert), "key": crypto.key_pem(key)}}}
        ),
    )
    await store.update(mesh)
    entries = await ca.ensure(mesh)
    assert [e.source for e in entries] == ["builtin", "provided"]
    roots, _, signer = await ca.bundle("default")
    assert signer == old.ca_id and crypto.cert_pem(cert) in roots and len(roots) == 2
    clock.t += 61
    new = await ca.sign("default", csr, ID, dt.timedelta(hours=1))
    assert new.ca_id == crypto.fingerprint(cert)
    await ca.stop()


async def test_trust_bundle_long_poll_wakes_on_rotation_and_on_activation(store: SQLiteStore) -> None:
    import asyncio

    ca = CAManager(store, crypto.KeyEncryptor.generate(), propagation=0.3)
    await ca.start()
    await ca.sign("default", check_csr(csr_for(), ID), ID, dt.timedelta(hours=1))
    _, version, signer = await ca.bundle("default")
    waiter = asyncio.create_task(ca.wait_bundle("default", version, 5))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    new = await ca.rotate("default")
    roots, v2, s2 = await asyncio.wait_for(waiter, 2)
    assert len(roots) == 2 and s2 == signer  # new root first ...
    roots, v3, s3 = await asyncio.wait_for(ca.wait_bundle("default", v2, 5), 2)
    assert s3 == new.id and v3 != v2  # ... then, by the clock alone, the new signer
    await ca.stop()


async def test_deleting_a_mesh_forgets_its_cas(store: SQLiteStore) -> None:
    import asyncio

    ca = CAManager(store, crypto.KeyEncryptor.generate())
    await ca.start()
    await ca.ensure("default")
    await store.delete(ResourceKey("Mesh", "", "default"))
    for _ in range(50):
        if not await store.list("MeshCA"):
            break
        await asyncio.sleep(0.01)
    assert await store.list("MeshCA") == []
    await ca.stop()


async def test_a_provided_key_stored_in_clear_by_an_older_version_is_sealed_on_start() -> None:
    from meshline.security import provided_key
    from meshline.security.controlplane import seal_stored_keys

    cert, key = make_ca("Old Corp")
    store = SQLiteStore(default_kinds(), ":memory:")
    await store.start()
    kek = crypto.KeyEncryptor.generate()
    spec = {"mtls": {"ca": {"type": "provided", "cert": pem(cert), "key": crypto.key_pem(key)}}}
    await store.create(Resource("Mesh", "corp", parse_spec(MeshSpec, spec)))
    await seal_stored_keys(store, kek)
    stored = (await store.get(ResourceKey("Mesh", "", "corp"))).spec
    assert isinstance(stored, MeshSpec)
    assert provided_key.is_sealed(stored.mtls.ca.key)
    assert provided_key.open_key(kek, "corp", stored.mtls.ca.key) == crypto.key_pem(key).strip()
    with pytest.raises(ValidationError, match="not for mesh 'other'"):
        provided_key.open_key(kek, "other", stored.mtls.ca.key)
    await store.close()
