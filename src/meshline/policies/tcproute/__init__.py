"""TCPRoute: weighted splitting of TCP connections (see docs/policies/routing.md)."""

from meshline.policies.tcproute.plugin import POLICY

__all__ = ["POLICY"]
