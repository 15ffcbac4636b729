"""LoadBalancer policy: algorithm, hash policies and locality-aware failover."""

from meshline.policies.loadbalancer.plugin import PLUGIN

__all__ = ["PLUGIN"]
