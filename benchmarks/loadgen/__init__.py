"""Load generators: ``openloop`` (fixed rate, C, latency) and ``wrk`` (saturation throughput)."""

from benchmarks.loadgen import openloop, wrk

__all__ = ["openloop", "wrk"]
