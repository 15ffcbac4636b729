"""Meshline's global rate-limit service: Envoy's RateLimitService API, counters in Redis.

It runs inside the control plane (on the xDS gRPC server; see :mod:`.service`).
Sidecars describe each request with a descriptor that also carries the limit (see
:mod:`.descriptor`), so the service keeps no copy of the policies; Redis holds the only
state, shared by every control-plane replica.
"""
