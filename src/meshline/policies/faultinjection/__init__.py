"""FaultInjection policy: delays and aborts for a share of a service's requests."""

from meshline.policies.faultinjection.plugin import POLICY

__all__ = ["POLICY"]
