"""Meshline's data-plane benchmark suite: ``python -m benchmarks`` (see benchmarks/README.md)."""
