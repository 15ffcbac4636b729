"""Certificate authority per mesh: builtin or provided roots, CSR signing, and rotation.

Identities are SPIFFE IDs ``spiffe://<trustDomain>/<mesh>/<service>`` (the same
string :meth:`MeshSnapshot.identity` renders into the sidecars' SAN matchers).
A workload certificate holds exactly that one URI SAN, an empty subject, key usage
digital signature and extended key usage client + server auth; it lives for the
mesh's ``mtls.certLifetime`` (default 24 h).

CAs over time (the ``MeshCA`` store record, one per mesh) are a list of entries,
each with ``added_at``, ``active_from`` and ``issued_until``. Everything else is a
pure function of that list and the clock:

* the *signer* at time t is the entry with the latest ``active_from <= t``;
* the *trust bundle* at time t holds the root of every entry that signs now, will
  sign later (pending) or may still have a leaf out there (``t < issued_until``).

Rotation (a new provided CA in the Mesh, a switch builtin <-> provided, or
``POST /api/v1/ca/{mesh}/rotate`` for builtin) adds an entry whose root enters the
bundle at once but which signs only from ``added_at + propagation``: agents see the
new root (they long-poll the bundle) before any peer presents a certificate it
signed. The old root stays in the bundle until every leaf the old CA signed has
expired (``issued_until`` is raised before a leaf is signed, so it is always an
upper bound), then drops out. Old and new roots are trusted side by side for at
least one certificate lifetime; connections never see a gap.

Private keys are sealed in the store (see :mod:`meshline.security.crypto`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from meshline.core.errors import Conflict, FieldProblem, Forbidden, NotFound, ValidationError
from meshline.core.mesh import MeshSpec
from meshline.core.resource import Resource, ResourceKey
from meshline.core.tasks import wait_set
from meshline.security import crypto
from meshline.security.kinds import CAEntry, MeshCASpec
from meshline.security.provided_key import KEY_PATH, open_key
from meshline.store.base import Change, Store

log = logging.getLogger("meshline.security.ca")

ROOT_LIFETIME = dt.timedelta(days=3650)
BACKDATE = dt.timedelta(minutes=1)  # tolerate small clock skew between hosts
# A retired root stays trusted this much longer than the last leaf it signed.
RETIRE_MARGIN = 300.0
DEFAULT_PROPAGATION = 30.0  # seconds between a new root entering the bundle and it signing


def spiffe_id(trust_domain: str, mesh: str, service: str) -> str:
    return f"spiffe://{trust_domain}/{mesh}/{service}"


class CSRInvalid(ValidationError):
    """The CSR cannot be used (not PEM, bad signature, weak key): 422."""

    def __init__(self, message: str) -> None:
        super().__init__([FieldProblem("csr", message)])


# -- provided CAs ----------------------------------------------------------------------

CERT_PATH = "spec.mtls.ca.cert"


@dataclass(frozen=True)
class CAMaterial:
    """A signing CA: its certificate, the chain up to (not including) the root, the root."""

    cert: x509.Certificate
    key: crypto.PrivateKey
    chain: tuple[x509.Certificate, ...]
    root: x509.Certificate

    @property
    def id(self) -> str:
        return crypto.fingerprint(self.cert)

    def chain_pem(self) -> str:
        return "".join(crypto.cert_pem(c) for c in self.chain)


def parse_provided(cert_pem: str | None, key_pem: str | None) -> CAMaterial:
    """Validate a user's CA (``spec.mtls.ca`` with ``type: provided``).

    ``cert`` is the CA certificate, optionally followed by its issuers up to the
    self-signed root (an intermediate CA works; the root is what peers trust).
    Raises ValidationError naming ``spec.mtls.ca.cert`` / ``spec.mtls.ca.key``.
    """
    problems: list[FieldProblem] = []
    if not cert_pem:
        problems.append(
            FieldProblem(CERT_PATH, "is required when type is provided; paste the CA certificate (PEM)")
        )
    if not key_pem:
        problems.append(
            FieldProblem(KEY_PATH, "is required when type is provided; paste the CA's private key (PEM)")
        )
    if problems:
        raise ValidationError(problems)
    assert cert_pem and key_pem
    try:
        certs = crypto.load_certs(cert_pem)
    except ValueError as err:
        raise ValidationError([FieldProblem(CERT_PATH, str(err))]) from None
    try:
        key = crypto.load_key(key_pem)
    except ValueError as err:
        raise ValidationError([FieldProblem(KEY_PATH, str(err))]) from None
    ca = certs[0]
    subject = ca.subject.rfc4514_string() or "(empty subject)"
    if not crypto.is_ca(ca):
        problems.append(
            FieldProblem(
                CERT_PATH,
                f"'{subject}' is not a CA certificate (it needs basicConstraints CA:TRUE and keyCertSign);"
                " provide a CA or intermediate CA certificate",
            )
        )
    try:
        crypto.check_key_strength(ca.public_key())
    except ValueError as err:
        problems.append(FieldProblem(CERT_PATH, f"the certificate's key {err}"))
    if crypto.public_der(key.public_key()) != crypto.public_der(ca.public_key()):
        problems.append(
            FieldProblem(
                KEY_PATH,
                f"does not match the certificate '{subject}' (a different public key); provide the private"
                " key of that CA certificate, or the certificate of this key",
            )
        )
    now = crypto.utcnow()
    if ca.not_valid_after_utc <= now:
        problems.append(FieldProblem(CERT_PATH, f"expired at {ca.not_valid_after_utc:%Y-%m-%d}; renew it"))
    elif ca.not_valid_before_utc > now + BACKDATE:
        problems.append(
            FieldProblem(CERT_PATH, f"is not valid before {ca.not_valid_before_utc:%Y-%m-%d %H:%M}Z")
        )
    for child, parent in zip(certs, certs[1:], strict=False):
        try:
            child.verify_directly_issued_by(parent)
        except Exception:  # signature or issuer-name mismatch
            problems.append(
                FieldProblem(
                    CERT_PATH,
                    f"'{child.subject.rfc4514_string()}' is not issued by the next certificate"
                    f" '{parent.subject.rfc4514_string()}'; order the chain from the CA up to the root",
                )
            )
    root = certs[-1]
    if not problems and not crypto.is_self_signed(root):
        problems.append(
            FieldProblem(
                CERT_PATH,
                f"the chain ends at '{root.subject.rfc4514_string()}', issued by"
                f" '{root.issuer.rfc4514_string()}', which is not a self-signed root; append the issuer"
                " certificates up to the root CA",
            )
        )
    if problems:
        raise ValidationError(problems)
    return CAMaterial(ca, key, tuple(certs[1:-1]) if len(certs) > 1 else (), root)


def new_builtin(mesh: str, now: dt.datetime | None = None) -> CAMaterial:
    key = crypto.new_ec_key()
    cert = crypto.new_root(f"Meshline CA for mesh {mesh}", key, ROOT_LIFETIME, now=now)
    return CAMaterial(cert, key, (), cert)


# -- CSRs and leaves -------------------------------------------------------------------


def load_csr(pem: object) -> x509.CertificateSigningRequest:
    if not isinstance(pem, str) or not pem.strip():
        raise CSRInvalid("is required: a PEM certificate signing request (-----BEGIN CERTIFICATE REQUEST-----)")
    try:
        csr = x509.load_pem_x509_csr(pem.encode())
    except ValueError:
        raise CSRInvalid(
            "is not a PEM certificate signing request (-----BEGIN CERTIFICATE REQUEST-----)"
        ) from None
    if not csr.is_signature_valid:
        raise CSRInvalid("has an invalid signature (it was not signed by the key it carries)")
    try:
        crypto.check_key_strength(csr.public_key())
    except ValueError as err:
        raise CSRInvalid(f"key {err}") from None
    return csr


def requested_identities(csr: x509.CertificateSigningRequest) -> list[str]:
    """Every name the CSR asks for (URI, DNS, IP, e-mail SANs)."""
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(getattr(n, "value", n)) for n in san]


def check_csr(pem: object, identity: str) -> x509.CertificateSigningRequest:
    """Parse a CSR (422 if unusable) and refuse it (403) if it asks for anything but ``identity``.

    A CSR with no SAN is fine: the certificate gets ``identity`` either way; the
    subject is never copied.
    """
    csr = load_csr(pem)
    others = [n for n in requested_identities(csr) if n != identity]
    if others:
        raise Forbidden(
            f"the CSR asks for {', '.join(others)}, but this token may only get a certificate for"
            f" {identity}; request only that identity (or none)"
        )
    return csr


def sign_leaf(
    csr: x509.CertificateSigningRequest,
    identity: str,
    ca: CAMaterial,
    lifetime: dt.timedelta,
    now: dt.datetime | None = None,
) -> x509.Certificate:
    now = now or crypto.utcnow()
    not_after = min(now + lifetime, ca.cert.not_valid_after_utc)
    pub = csr.public_key()
    ski = _ski(ca.cert)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca.cert.subject)
        .public_key(pub)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        # An empty subject makes the SAN critical (RFC 5280 4.2.1.6).
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity)]), critical=True)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(crypto.leaf_key_usage(), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
    )
    if ski is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
    return builder.sign(ca.key, crypto.signature_hash(ca.key))


def _ski(cert: x509.Certificate) -> x509.SubjectKeyIdentifier | None:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return None


# -- CAs over time (pure) --------------------------------------------------------------


def signer_at(entries: Sequence[CAEntry], t: float) -> CAEntry | None:
    active = [e for e in entries if e.active_from <= t]
    if not active:
        return min(entries, key=lambda e: e.active_from) if entries else None
    return max(active, key=lambda e: (e.active_from, e.added_at))


def newest(entries: Sequence[CAEntry]) -> CAEntry | None:
    return max(entries, key=lambda e: (e.active_from, e.added_at)) if entries else None


def live_at(entries: Sequence[CAEntry], t: float) -> list[CAEntry]:
    """Entries whose root must be trusted at ``t``: signing, pending, or with leaves out there."""
    signer = signer_at(entries, t)
    return [
        e
        for e in entries
        if e is signer or e.active_from > t or t < e.issued_until + RETIRE_MARGIN
    ]


def pem_block(text: str) -> str:
    """PEM text ending in exactly one newline (specs strip whitespace; bundles concatenate)."""
    text = text.strip()
    return text + "\n" if text else ""


def bundle_at(entries: Sequence[CAEntry], t: float) -> list[str]:
    """The trust bundle: PEM roots, oldest first, without duplicates."""
    out: list[str] = []
    for e in sorted(live_at(entries, t), key=lambda e: e.added_at):
        root = pem_block(e.root)
        if root not in out:
            out.append(root)
    return out


def next_transition(entries: Sequence[CAEntry], t: float) -> float | None:
    """When the signer or the bundle changes next by the clock alone."""
    times = [e.active_from for e in entries if e.active_from > t]
    times += [e.issued_until + RETIRE_MARGIN for e in entries if e.issued_until + RETIRE_MARGIN > t]
    return min(times) if times else None


def bundle_version(entries: Sequence[CAEntry], t: float) -> str:
    signer = signer_at(entries, t)
    return crypto.digest(*bundle_at(entries, t), signer.id if signer else "")


def add_entry(entries: Sequence[CAEntry], entry: CAEntry, now: float, propagation: float) -> list[CAEntry]:
    """Add a CA. Pending entries (nothing signed by them yet) are replaced; the new one
    signs after ``propagation`` seconds, or at once if no CA has signed anything yet."""
    kept = [e for e in entries if e.active_from <= now or e.issued_until > 0]
    # Until some CA has signed a leaf nobody relies on the bundle: no need to wait.
    start = now + propagation if any(e.issued_until > 0 for e in kept) else now
    return [*kept, entry.model_copy(update={"added_at": now, "active_from": start})]


def prune(entries: Sequence[CAEntry], now: float) -> list[CAEntry]:
    live = live_at(entries, now)
    return [e for e in entries if e in live]


# -- the store-backed manager ----------------------------------------------------------


@dataclass(frozen=True)
class Issued:
    identity: str
    cert_chain: str  # leaf + intermediates (PEM)
    trust_bundle: str  # roots (PEM)
    expires_at: float
    ca_id: str
    serial: int


@dataclass
class DataplaneCert:
    identity: str
    expires_at: float
    issued_at: float
    serial: int
    ca_id: str = ""

    def to_status(self) -> dict[str, object]:
        """As a dataplane's status shows it (``meshline get dataplanes``, the dashboard)."""
        return {
            "certExpiresAt": self.expires_at,
            "certIssuedAt": self.issued_at,
            "certIdentity": self.identity,
            "certSerial": format(self.serial, "x"),
            "certAuthority": self.ca_id,
        }


class CAManager:
    """Keeps each mesh's ``MeshCA`` record in step with its Mesh and signs workload CSRs.

    Every replica runs one; they agree through the store (optimistic concurrency:
    a write that lost a race is retried on the new state).
    """

    def __init__(
        self,
        store: Store,
        kek: crypto.KeyEncryptor,
        propagation: float = DEFAULT_PROPAGATION,
        clock: Callable[[], float] = time.time,
        meshes: Callable[[str], Resource | None] | None = None,
    ) -> None:
        self.store = store
        self._mesh_cache = meshes  # in-memory view of Mesh resources (the reconciler's), if any
        self.kek = kek
        self.propagation = propagation
        self.clock = clock
        self._records: dict[str, Resource] = {}  # mesh -> MeshCA record (cache)
        self._keys: dict[str, CAMaterial] = {}  # entry id -> opened material
        self._locks: dict[str, asyncio.Lock] = {}
        self._changed: dict[str, asyncio.Event] = {}
        self._unsubscribe: Callable[[], None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        # what this replica signed, per (mesh, dataplane): for status and metrics
        self.signed: dict[tuple[str, str], DataplaneCert] = {}

    # -- lifecycle -----------------------------------------------------------------
    async def start(self) -> None:
        self._unsubscribe = self.store.subscribe(self._on_change)
        for r in await self.store.list("MeshCA"):
            self._records[r.name] = r

    async def stop(self) -> None:
        self._closing = True
        for mesh in list(self._changed):
            self._wake(mesh)  # long polls answer now, so the API can shut down
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _on_change(self, change: Change) -> None:
        key = change.key
        if key.kind == "MeshCA":
            if change.resource is None:
                self._records.pop(key.name, None)
            else:
                prior = self._records.get(key.name)
                if prior is None or prior.version <= change.resource.version:
                    self._records[key.name] = change.resource
            self._wake(key.name)
        elif key.kind == "Mesh":
            if change.resource is None:
                self._spawn(self._forget(key.name))
            else:
                spec = change.resource.spec
                assert isinstance(spec, MeshSpec)
                if spec.mtls.mode != "disabled":
                    self._spawn(self._sync_quietly(change.resource))

    def _spawn(self, coro: object) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _wake(self, mesh: str) -> None:
        ev = self._changed.pop(mesh, None)
        if ev is not None:
            ev.set()

    def _lock(self, mesh: str) -> asyncio.Lock:
        return self._locks.setdefault(mesh, asyncio.Lock())

    async def _sync_quietly(self, mesh: Resource) -> None:
        try:
            await self.ensure(mesh)
        except Exception:
            log.exception("cannot set up the CA of mesh %s", mesh.name)

    async def _forget(self, mesh: str) -> None:
        """A deleted mesh takes its CAs with it (a new mesh of that name must not trust old certs)."""
        with contextlib.suppress(NotFound, Conflict):
            await self.store.delete(ResourceKey("MeshCA", "", mesh))
        self._records.pop(mesh, None)
        self.signed = {k: v for k, v in self.signed.items() if k[0] != mesh}

    # -- state ---------------------------------------------------------------------
    async def _load(self, mesh: str) -> Resource | None:
        try:
            r = await self.store.get(ResourceKey("MeshCA", "", mesh))
        except NotFound:
            self._records.pop(mesh, None)
            return None
        self._records[mesh] = r
        return r

    def entries(self, mesh: str) -> list[CAEntry]:
        r = self._records.get(mesh)
        if r is None:
            return []
        assert isinstance(r.spec, MeshCASpec)
        return list(r.spec.entries)

    async def _write(self, mesh: str, prior: Resource | None, entries: list[CAEntry]) -> Resource:
        res = Resource(kind="MeshCA", name=mesh, spec=MeshCASpec(entries=entries))
        stored = (
            await self.store.create(res) if prior is None else await self.store.update(res, prior.version)
        )
        self._records[mesh] = stored
        self._wake(mesh)
        return stored

    def _seal_entry(self, mesh: str, material: CAMaterial, source: str) -> CAEntry:
        sealed = self.kek.seal(crypto.key_pem(material.key).encode(), f"mesh-ca:{mesh}:{material.id}")
        self._keys[material.id] = material
        return CAEntry(
            id=material.id,
            source=source,  # type: ignore[arg-type]
            cert=crypto.cert_pem(material.cert),
            chain=material.chain_pem(),
            root=crypto.cert_pem(material.root),
            key=sealed,
            added_at=0.0,
            active_from=0.0,
        )

    def material(self, mesh: str, entry: CAEntry) -> CAMaterial:
        m = self._keys.get(entry.id)
        if m is None:
            key = crypto.load_key(self.kek.open(entry.key, f"mesh-ca:{mesh}:{entry.id}"))
            chain = tuple(crypto.load_certs(entry.chain)) if entry.chain.strip() else ()
            m = self._keys[entry.id] = CAMaterial(
                crypto.load_certs(entry.cert)[0], key, chain, crypto.load_certs(entry.root)[0]
            )
        return m

    def _desired(self, mesh: Resource, entries: list[CAEntry]) -> CAEntry | None:
        """A new entry if the Mesh asks for a CA other than the newest one, else None."""
        spec = mesh.spec
        assert isinstance(spec, MeshSpec)
        ca = spec.mtls.ca
        last = newest(entries)
        if ca.type == "builtin":
            if last is not None and last.source == "builtin":
                return None
            log.info("mesh %s: generating its builtin CA", mesh.name)
            return self._seal_entry(mesh.name, new_builtin(mesh.name), "builtin")

        material = parse_provided(ca.cert, open_key(self.kek, mesh.name, ca.key))
        if last is not None and last.id == material.id:
            return None
        log.info("mesh %s: adopting the provided CA %s", mesh.name, material.cert.subject.rfc4514_string())
        return self._seal_entry(mesh.name, material, "provided")

    async def _mesh(self, name: str) -> Resource:
        if self._mesh_cache is not None:
            cached = self._mesh_cache(name)
            if cached is not None:
                return cached
        try:
            return await self.store.get(ResourceKey("Mesh", "", name))
        except NotFound:
            raise NotFound(f"mesh '{name}' does not exist") from None

    async def _update(
        self, mesh: str, change: Callable[[list[CAEntry], float], list[CAEntry] | None]
    ) -> list[CAEntry]:
        """Read-modify-write the mesh's record, retrying when another replica wrote first."""
        async with self._lock(mesh):
            for _ in range(10):
                prior = self._records.get(mesh) or await self._load(mesh)
                entries = self.entries(mesh) if prior is not None else []
                new = change(entries, self.clock())
                if new is None:
                    return entries
                try:
                    stored = await self._write(mesh, prior, new)
                except Conflict:
                    await self._load(mesh)
                    continue
                assert isinstance(stored.spec, MeshCASpec)
                return list(stored.spec.entries)
            raise Conflict(f"the CA record of mesh '{mesh}' keeps changing; retry")

    async def ensure(self, mesh: Resource | str) -> list[CAEntry]:
        """Make the mesh's CA record match its Mesh spec (creating the builtin root on first need)."""
        res = mesh if isinstance(mesh, Resource) else await self._mesh(mesh)
        name = res.name

        def change(entries: list[CAEntry], now: float) -> list[CAEntry] | None:
            entry = self._desired(res, entries)
            if entry is None:
                return None
            return add_entry(entries, entry, now, self.propagation)

        entries = self.entries(name)
        if entries and self._desired_cached(res, entries):
            return entries
        return await self._update(name, change)

    def _desired_cached(self, res: Resource, entries: list[CAEntry]) -> bool:
        """Cheap check (no key generation) that the newest entry is what the Mesh asks for."""
        spec = res.spec
        assert isinstance(spec, MeshSpec)
        last = newest(entries)
        if last is None:
            return False
        if spec.mtls.ca.type == "builtin":
            return last.source == "builtin"
        try:
            certs = crypto.load_certs(spec.mtls.ca.cert or "")
        except ValueError:
            return False
        return last.id == crypto.fingerprint(certs[0])

    async def rotate(self, mesh: str) -> CAEntry:
        """Start a new builtin root (only for ``type: builtin``; provided CAs rotate by applying a new one)."""
        res = await self._mesh(mesh)
        spec = res.spec
        assert isinstance(spec, MeshSpec)
        if spec.mtls.ca.type != "builtin":
            raise Conflict(
                f"mesh '{mesh}' uses a provided CA; rotate it by applying the Mesh with the new"
                " spec.mtls.ca.cert and key"
            )
        fresh = self._seal_entry(mesh, new_builtin(mesh), "builtin")
        entries = await self._update(mesh, lambda e, now: add_entry(e, fresh, now, self.propagation))
        log.info("mesh %s: CA rotation started; the new root signs from %s", mesh, crypto.iso(entries[-1].active_from))
        return entries[-1]

    async def prune(self, mesh: str) -> None:
        def change(entries: list[CAEntry], now: float) -> list[CAEntry] | None:
            kept = prune(entries, now)
            return kept if len(kept) != len(entries) else None

        await self._update(mesh, change)

    # -- what agents ask for -------------------------------------------------------
    async def bundle(self, mesh: str) -> tuple[list[str], str, str]:
        """(roots PEM, version, signing CA id) now."""
        entries = await self.ensure(mesh)
        now = self.clock()
        signer = signer_at(entries, now)
        return bundle_at(entries, now), bundle_version(entries, now), signer.id if signer else ""

    async def wait_bundle(self, mesh: str, version: str, timeout: float) -> tuple[list[str], str, str]:
        """Long poll: return when the bundle's version differs from ``version`` or after ``timeout``."""
        deadline = self.clock() + timeout
        while True:
            roots, current, signer = await self.bundle(mesh)
            now = self.clock()
            if current != version or now >= deadline or self._closing:
                return roots, current, signer
            wait = deadline - now
            nxt = next_transition(self.entries(mesh), now)
            if nxt is not None:
                wait = min(wait, max(0.01, nxt - now + 0.01))
            ev = self._changed.setdefault(mesh, asyncio.Event())
            await wait_set(ev, wait)

    async def sign(
        self,
        mesh: str,
        csr: x509.CertificateSigningRequest,
        identity: str,
        lifetime: dt.timedelta,
        dataplane: str | None = None,
    ) -> Issued:
        entries = await self.ensure(mesh)
        now = self.clock()
        signer = signer_at(entries, now)
        assert signer is not None
        material = self.material(mesh, signer)
        not_after = min(now + lifetime.total_seconds(), material.cert.not_valid_after_utc.timestamp())
        if not_after > signer.issued_until:
            # Raise the bound (generously, so this write happens about once per lifetime)
            # *before* signing: the bundle must keep this root while the leaf lives.
            target = now + 2 * lifetime.total_seconds()
            sid = signer.id

            def bump(entries: list[CAEntry], _now: float) -> list[CAEntry] | None:
                out = []
                for e in entries:
                    if e.id == sid and e.issued_until < not_after:
                        e = e.model_copy(update={"issued_until": target})
                    out.append(e)
                return out if out != entries else None

            entries = await self._update(mesh, bump)
            current = signer_at(entries, self.clock())
            if current is None or current.id != sid:
                # a rotation landed meanwhile; sign with the CA that is current now
                return await self.sign(mesh, csr, identity, lifetime, dataplane)
        leaf = sign_leaf(csr, identity, material, lifetime, crypto.from_ts(now))
        chain = crypto.cert_pem(leaf) + material.chain_pem()
        roots = bundle_at(entries, now)
        issued = Issued(
            identity=identity,
            cert_chain=chain,
            trust_bundle="".join(roots),
            expires_at=leaf.not_valid_after_utc.timestamp(),
            ca_id=signer.id,
            serial=leaf.serial_number,
        )
        if dataplane:
            self.signed[(mesh, dataplane)] = DataplaneCert(
                identity, issued.expires_at, now, leaf.serial_number, signer.id
            )
        return issued

    def status(self, mesh: str) -> dict[str, object]:
        entries = self.entries(mesh)
        now = self.clock()
        signer = signer_at(entries, now)
        live = live_at(entries, now)
        out = []
        for e in sorted(entries, key=lambda e: e.added_at):
            cert = crypto.load_certs(e.cert)[0]
            state = (
                "signing"
                if e is signer
                else "pending"
                if e.active_from > now
                else "retiring"
                if e in live
                else "retired"
            )
            out.append(
                {
                    "id": e.id,
                    "source": e.source,
                    "subject": cert.subject.rfc4514_string(),
                    "state": state,
                    "addedAt": e.added_at,
                    "activeFrom": e.active_from,
                    "trustedUntil": e.issued_until + RETIRE_MARGIN if e.issued_until else None,
                    "notAfter": cert.not_valid_after_utc.timestamp(),
                }
            )
        return {"mesh": mesh, "signer": signer.id if signer else None, "cas": out, "version": bundle_version(entries, now)}

