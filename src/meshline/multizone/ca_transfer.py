"""How a zone gets its mesh's CA: one trust domain, one CA per mesh, held by global.

Global owns each mesh's CA (builtin or provided, as a standalone control plane does). Zones
must sign workload certificates that every other zone's sidecars accept, so each zone signs
with the same CA: global sends the CA certificate chain and its private key with the Mesh,
and the zone keeps it as a *provided* CA of that Mesh (sealed with the zone's own
key-encryption key before it reaches the zone's store, like any provided key).

The key never travels in clear, not even inside the TLS stream: the zone makes an X25519 key
pair per process and sends the public half with each down request (``box``); global seals
the CA key to it (an ephemeral X25519 exchange, HKDF-SHA256, AES-256-GCM bound to the zone
and mesh names). A proxy or a log that sees the stream's plaintext sees no key; only the zone
process that asked can open it.

Rotation: a new CA at global (``ca rotate`` or a new provided CA) changes what the Mesh
carries; each zone adopts it as a new provided CA, whose root enters that zone's trust bundle
at once and which signs only after the propagation delay (security/ca.py), so a zone that was
connected during that delay trusts the new root before any peer presents a certificate from it.
"""

from __future__ import annotations

import base64
import os

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

PREFIX = "box1:"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _aead_key(shared: bytes, purpose: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose.encode()).derive(shared)


class ZoneBox:
    """The zone's side: a key pair for this process; ``public`` goes with each down request."""

    def __init__(self) -> None:
        self._key = X25519PrivateKey.generate()

    @property
    def public(self) -> str:
        raw = self._key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return _b64(raw)

    def open(self, sealed: str, purpose: str) -> bytes:
        if not sealed.startswith(PREFIX):
            raise ValueError("not a sealed box")
        peer, nonce, body = (_unb64(p) for p in sealed[len(PREFIX):].split("."))
        shared = self._key.exchange(X25519PublicKey.from_public_bytes(peer))
        return AESGCM(_aead_key(shared, purpose)).decrypt(nonce, body, purpose.encode())


def seal_for(box_public: str, secret: bytes, purpose: str) -> str:
    """Global's side: ``secret`` sealed so only the holder of ``box_public``'s key opens it."""
    peer = X25519PublicKey.from_public_bytes(_unb64(box_public))
    ephemeral = X25519PrivateKey.generate()
    shared = ephemeral.exchange(peer)
    nonce = os.urandom(12)
    body = AESGCM(_aead_key(shared, purpose)).encrypt(nonce, secret, purpose.encode())
    mine = ephemeral.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return PREFIX + ".".join(_b64(p) for p in (mine, nonce, body))


def purpose(zone: str, mesh: str) -> str:
    return f"meshline-zone-ca:{zone}:{mesh}"
