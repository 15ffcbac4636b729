"""CircuitBreaker policy: connection/request/retry limits and outlier detection."""

from meshline.policies.circuitbreaker.plugin import POLICY

__all__ = ["POLICY"]
