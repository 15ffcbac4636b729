"""RateLimit policy: local (per instance) and global (per service, in Redis) limits."""

from meshline.policies.ratelimit.plugin import POLICY

__all__ = ["POLICY"]
