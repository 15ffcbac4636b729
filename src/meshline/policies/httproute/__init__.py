"""HTTPRoute: L7 routing of calls to a service (see docs/policies/routing.md)."""

from meshline.policies.httproute.plugin import POLICY

__all__ = ["POLICY"]
