"""Percentiles computed the same way as the C load generator (nearest rank)."""

from __future__ import annotations

import math
from collections.abc import Sequence

PERCENTILES: tuple[tuple[str, float], ...] = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9))


def nearest_rank(sorted_values: Sequence[float], pct: float) -> float:
    """The smallest value such that at least ``pct`` % of the values are <= it."""
    if not sorted_values:
        return 0.0
    # round() first: 99.9 / 100 * 1000 is 999.0000000000001 in floating point
    rank = max(1, min(len(sorted_values), math.ceil(round(pct / 100.0 * len(sorted_values), 9))))
    return sorted_values[rank - 1]


def distribution(values: Sequence[float]) -> dict[str, float]:
    """count, mean, p50, p90, p99, p99.9, max, min of ``values``."""
    ordered = sorted(values)
    out: dict[str, float] = {"count": float(len(ordered))}
    out["mean"] = sum(ordered) / len(ordered) if ordered else 0.0
    for name, pct in PERCENTILES:
        out[name] = nearest_rank(ordered, pct)
    out["max"] = ordered[-1] if ordered else 0.0
    out["min"] = ordered[0] if ordered else 0.0
    return out
