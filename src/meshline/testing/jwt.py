"""Test JWTs: an ES256 signing key, its JWKS, and tokens with the claims a test wants.

    issuer = TestIssuer.make("https://login.example.test")
    jwks = issuer.jwks()                       # {"keys": [...]} as JSON
    token = issuer.token(aud="web", sub="alice", expires_in=60)
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class TestIssuer:
    __test__ = False
    issuer: str
    key: ec.EllipticCurvePrivateKey
    kid: str = "test-key"

    @classmethod
    def make(cls, issuer: str, kid: str = "test-key") -> TestIssuer:
        return cls(issuer, ec.generate_private_key(ec.SECP256R1()), kid)

    def jwks(self) -> str:
        nums = self.key.public_key().public_numbers()
        key = {"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": self.kid,
               "x": _b64(nums.x.to_bytes(32, "big")), "y": _b64(nums.y.to_bytes(32, "big"))}  # fmt: skip
        return json.dumps({"keys": [key]})

    def token(self, expires_in: float = 300, **claims: Any) -> str:
        now = int(time.time())
        payload = {"iss": self.issuer, "iat": now, "exp": int(now + expires_in), **claims}
        header = {"alg": "ES256", "typ": "JWT", "kid": self.kid}
        signing = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
        r, s = decode_dss_signature(self.key.sign(signing.encode(), ec.ECDSA(hashes.SHA256())))
        return f"{signing}.{_b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"
