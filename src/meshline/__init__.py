"""Meshline: a service mesh with a Python control plane and Envoy as its data plane."""

__version__ = "0.1.0"
