"""JWTAuthentication policy: end-user tokens checked by the destination's proxy (a gateway or a sidecar)."""

from meshline.policies.jwtauthn.plugin import POLICY

__all__ = ["POLICY"]
