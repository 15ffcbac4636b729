"""Retry policy: HTTP/gRPC retries with backoff and a retry budget; TCP connect retries."""

from meshline.policies.retry.plugin import POLICY

__all__ = ["POLICY"]
