"""TrafficPermission policy: allow/deny callers by mTLS identity, at L4 and per HTTP request, with dry-run."""

from meshline.policies.trafficpermission.plugin import POLICY

__all__ = ["POLICY"]
