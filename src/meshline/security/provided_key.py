"""A provided CA's private key (``spec.mtls.ca.key`` of a Mesh) is sealed before it reaches
the store, like every other private key the control plane keeps.

The API writes ``seal_mesh(res, prior)`` instead of ``res``: the PEM becomes
``kek1:...`` (AES-256-GCM with the KEK, bound to the mesh's name), so neither the database,
its WAL, PostgreSQL's change log nor a backup holds the key in clear. Whoever uses the key
(the CA manager, the validator) calls ``open_key``. A Mesh read back by an admin shows the
sealed text; applying it again keeps the key (it opens with this control plane's KEK).
"""

from __future__ import annotations

from meshline.core.errors import FieldProblem, ValidationError
from meshline.core.mesh import MeshSpec
from meshline.core.resource import Resource
from meshline.security import crypto

KEY_PATH = "spec.mtls.ca.key"  # where a provided CA's key sits in a Mesh


def purpose(mesh: str) -> str:
    return f"mesh-provided-ca-key:{mesh}"


def is_sealed(key: str | None) -> bool:
    return bool(key) and str(key).startswith(crypto.KeyEncryptor.PREFIX)


def open_key(kek: crypto.KeyEncryptor, mesh: str, key: str | None) -> str | None:
    """The PEM of ``key`` (sealed or, from a user's document, in clear)."""
    if not key or not is_sealed(key):
        return key
    try:
        return kek.open(key, purpose(mesh)).decode()
    except (crypto.SecretError, ValueError):
        raise ValidationError(
            [
                FieldProblem(
                    KEY_PATH,
                    f"is sealed, but not for mesh '{mesh}' with this control plane's key-encryption key;"
                    " paste the CA's private key (PEM) instead",
                )
            ]
        ) from None


def _with_key(res: Resource, key: str) -> Resource:
    spec = res.spec
    assert isinstance(spec, MeshSpec)
    ca = spec.mtls.ca.model_copy(update={"key": key})
    mtls = spec.mtls.model_copy(update={"ca": ca})
    return Resource(res.kind, res.name, spec.model_copy(update={"mtls": mtls}), res.mesh,
                    res.version, res.created_at, res.updated_at)  # fmt: skip


def seal_mesh(kek: crypto.KeyEncryptor, res: Resource, prior: Resource | None) -> Resource:
    """``res`` as it may be stored: a Mesh's provided key sealed. The same key as ``prior``'s
    keeps ``prior``'s sealed text, so applying an unchanged Mesh changes nothing."""
    if res.kind != "Mesh" or not isinstance(res.spec, MeshSpec):
        return res
    key = res.spec.mtls.ca.key
    if not key:
        return res
    plain = open_key(kek, res.name, key)
    assert plain is not None
    if prior is not None and isinstance(prior.spec, MeshSpec):
        old = prior.spec.mtls.ca.key
        if is_sealed(old) and _opens_to(kek, prior.name, old, plain):
            return _with_key(res, str(old))
    if is_sealed(key):
        return res
    return _with_key(res, kek.seal(plain.encode(), purpose(res.name)))


def _opens_to(kek: crypto.KeyEncryptor, mesh: str, sealed: str | None, plain: str) -> bool:
    try:
        return open_key(kek, mesh, sealed) == plain
    except ValidationError:
        return False
