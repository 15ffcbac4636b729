"""Simulated dataplanes: many ADS streams in one process, each speaking to the control plane as
Envoy does, for the control-plane benchmarks (see ``envoy_like.py`` for the protocol details).

Run as ``python -m benchmarks.adssim`` (driven over stdin/stdout by :mod:`.control`), so that
its CPU is not the control plane's: on a 2-core machine the two processes get a core each.
"""
