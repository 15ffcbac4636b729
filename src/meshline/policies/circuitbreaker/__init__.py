"""CircuitBreaker policy: connection/request/retry limits and outlier detection."""

from meshline.policies.circuitbreaker.plugin import PLUGIN

__all__ = ["PLUGIN"]
