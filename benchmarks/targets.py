"""The issue's targets and published anchors, and a measured figure checked against one.

A :class:`Check` is one line of the "Targets" table in the terminal and in RESULTS.md:
what was measured, the target, whether it is met and by how much, and the anchor
(what Istio, Linkerd, Consul or Kuma publish for the same thing) next to it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

# Anchors quoted by the benchmarks issue (their own machines, their own setups: context, not a race).
ANCHOR_LATENCY = "Istio 1.20: +0.228 ms p90, +0.298 ms p99 (larger machines)"
ANCHOR_CPU = "Istio 1.24: 0.20 vCPU per 1k req/s"
ANCHOR_MEMORY = "Istio 1.24: 60 MB; Linkerd: 18-26 MB"
ANCHOR_MESH_SIZE = "Istio: +~35 KB per cluster unless hand-scoped (Sidecar resource)"
ANCHOR_PROPAGATION = "Istio convergence at scale: 1.5-4.5 s p90"
ANCHOR_STORM = "Consul tuned its xDS push rate on a 5,000-stream test on 2 cores"
ANCHOR_CP_MEMORY = "Kuma sizing: ~1 MB per dataplane; a bare grpc.aio stream here: ~57 KB"
ANCHOR_FLOOR = "bare grpc.aio ADS server here: ~0.2 ms CPU per stream per pushed type"


@dataclass(frozen=True)
class Check:
    figure: str  # what, e.g. "route change p99, 1,000 dataplanes"
    value: float | None  # None: not measured (the reason goes in ``note``)
    unit: str  # "s", "ms", "MB", "KB", "x", "vCPU", "" (a count)
    target: float
    better: str = "lower"  # or "higher"
    anchor: str = ""
    note: str = ""

    @property
    def met(self) -> bool | None:
        if self.value is None:
            return None
        return self.value <= self.target if self.better == "lower" else self.value >= self.target

    def room(self) -> str:
        """How far from the target, in the direction that matters: "3.1x under", "12% over"."""
        v, t = self.value, self.target
        if v is None or t == 0:
            return ""
        if self.better == "lower":
            if v <= 0:
                return "met"
            ratio = t / v
            if ratio >= 1.5:
                return f"{ratio:.1f}x under"
            return f"{abs(1 - v / t):.0%} {'under' if v <= t else 'over'}"
        ratio = v / t
        if ratio >= 1.5:
            return f"{ratio:.1f}x over"
        return f"{abs(ratio - 1):.0%} {'over' if v >= t else 'under'}"

    def target_text(self) -> str:
        return f"{'≤' if self.better == 'lower' else '≥'} {fmt_value(self.target, self.unit)}"

    def value_text(self) -> str:
        return "-" if self.value is None else fmt_value(self.value, self.unit)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "met": self.met, "room": self.room()}


def fmt_value(value: float, unit: str) -> str:
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "":
        return f"{value:,.0f}"
    if abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    elif abs(value) >= 1:
        text = f"{value:.2f}"
    else:
        text = f"{value:.3f}"
    return f"{text} {unit}"


def verdict(check: Check) -> str:
    met = check.met
    return "n/a" if met is None else "met" if met else "NOT met"
