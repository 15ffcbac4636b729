"""LoadBalancer policy: algorithm, hash policies and locality-aware failover."""

from meshline.policies.loadbalancer.plugin import POLICY

__all__ = ["POLICY"]
