"""The cluster's default-priority circuit-breaker thresholds, shared by CircuitBreaker and Retry.

CircuitBreaker sets the limits, Retry sets the retry budget; both live in the same
``Thresholds`` entry, so each edits it in place instead of replacing it.
"""

from __future__ import annotations

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2
from envoy.config.core.v3 import base_pb2


def default_thresholds(cluster: cluster_pb2.Cluster) -> circuit_breaker_pb2.CircuitBreakers.Thresholds:
    for thresholds in cluster.circuit_breakers.thresholds:
        if thresholds.priority == base_pb2.DEFAULT:
            return thresholds
    return cluster.circuit_breakers.thresholds.add(priority=base_pb2.DEFAULT)
