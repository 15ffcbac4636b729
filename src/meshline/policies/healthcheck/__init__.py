"""HealthCheck policy: active HTTP/TCP/gRPC checks of a service's instances, plus passive checks."""

from meshline.policies.healthcheck.plugin import POLICY

__all__ = ["POLICY"]
