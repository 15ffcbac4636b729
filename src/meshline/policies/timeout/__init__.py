"""Timeout policy: connect, request, idle and per-stream timeouts of outbound traffic."""

from meshline.policies.timeout.plugin import POLICY

__all__ = ["POLICY"]
