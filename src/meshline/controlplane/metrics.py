"""The control plane's own metrics (Prometheus text at /metrics) and Prometheus service
discovery for every dataplane's metrics endpoint (served at GET /api/v1/prometheus/targets by :mod:`meshline.api.prometheus`).

Push latency is measured from the first store change a config carries to the moment the
sidecar ACKed every resource type of that config, from the timestamps the ADS server
records (:mod:`.status`): the reconciler tells :meth:`ControlPlaneMetrics.on_push` which
dataplanes got a new config and when the change happened; the ACK is looked for when the
same dataplane gets its next config and at every scrape, so an observation is exact
whenever it is made.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from meshline import __version__
from meshline.core.dataplane import DataplaneSpec
from meshline.xds import names
from meshline.xds.snapshot import BY_NAME, SHORT

if TYPE_CHECKING:
    from meshline.controlplane.context import ControlPlaneContext
    from meshline.controlplane.reconciler import Reconciler
    from meshline.xds.status import StatusRegistry

_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# A config not ACKed this long after it was pushed is given up on (sidecar gone, or it
# never subscribed to that type); it is counted in meshline_xds_pushes_unacked_total.
PENDING_TTL_S = 600.0
UNMATCHED_ROUTE = "unmatched"  # API requests to no route: one label value, not one per path

HELP = {
    "meshline_control_plane_info": "Always 1; the version label says which Meshline runs",
    "meshline_api_requests_total": "REST API requests by method, route and status code",
    "meshline_api_request_duration_seconds": "REST API request handling time",
    "meshline_xds_pushes_total": "New configurations handed to connected sidecars (one per dataplane and change)",
    "meshline_xds_push_latency_seconds": "From a store change to the sidecar ACKing the configuration that carries it",
    "meshline_xds_pushes_unacked_total": "Pushes given up on: not ACKed within 10 minutes",
    "meshline_xds_nacks_total": "Configurations sidecars rejected (NACK)",
    "meshline_dataplanes_connected": "Sidecars connected to this replica's xDS server",
    "meshline_dataplanes": "Registered dataplanes by xDS state (in-sync, pushing, rejected, offline)",
    "meshline_dataplane_render_errors": "Dataplanes whose configuration cannot be rendered (they keep the last good one)",
}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Mapping[str, str]) -> str:
    return ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


@dataclass
class Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * (len(_BUCKETS) + 1))
    total: float = 0.0
    n: int = 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(_BUCKETS):
            if value <= bound:
                self.counts[i] += 1
                break
        else:
            self.counts[-1] += 1
        self.total += value
        self.n += 1

    def lines(self, name: str, labels: str) -> list[str]:
        out, cum = [], 0
        sep = "," if labels else ""
        for bound, c in zip((*_BUCKETS, float("inf")), self.counts, strict=True):
            cum += c
            le = "+Inf" if bound == float("inf") else repr(bound)
            out.append(f'{name}_bucket{{{labels}{sep}le="{le}"}} {cum}')
        braced = f"{{{labels}}}" if labels else ""
        out.append(f"{name}_sum{braced} {self.total}")
        out.append(f"{name}_count{braced} {self.n}")
        return out


@dataclass
class _Push:
    """A config handed to a connected sidecar, waiting for its ACK."""

    mesh: str
    versions: dict[str, str]  # xDS type (CDS, LDS...) -> version
    changes: list[float]  # wall-clock times of the changes this config carries
    pushed_at: float


class ControlPlaneMetrics:
    def __init__(self) -> None:
        self.api_requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self.api_latency = Histogram()
        self.known_routes: frozenset[str] | None = None  # set once the API's routes exist
        self.pushes: dict[str, int] = defaultdict(int)  # mesh -> configs pushed
        self.push_latency: dict[str, Histogram] = defaultdict(Histogram)  # mesh -> change to ACK
        self.unacked: dict[str, int] = defaultdict(int)
        self.nacks: dict[str, int] = defaultdict(int)
        self.gauges: dict[str, float] = {}
        self._nacks_seen: dict[str, int] = {}
        self._pending: dict[str, _Push] = {}
        self._reconciler: Reconciler | None = None
        self._status: StatusRegistry | None = None

    # -- inputs ----------------------------------------------------------------------
    def api_request(self, method: str, route: str, status: int, seconds: float) -> None:
        if self.known_routes is not None and route not in self.known_routes:
            route = UNMATCHED_ROUTE
        self.api_requests[(method, route, status)] += 1
        self.api_latency.observe(seconds)

    def watch(self, reconciler: Reconciler, status: StatusRegistry) -> None:
        """Count pushes and time them until ACKed (the reconciler calls :meth:`on_push`)."""
        self._reconciler, self._status = reconciler, status
        reconciler.listeners.append(self.on_push)

    def on_push(self, mesh: str, nodes: list[str], first_change_at: float) -> None:
        assert self._reconciler is not None and self._status is not None
        now = time.time()
        changed_at = now - (time.monotonic() - first_change_at) if first_change_at else now
        for node in nodes:
            self.settle(node)
            st = self._status.find(node)
            result = self._reconciler.results.get(node)
            if st is None or not st.connected or result is None:
                continue  # a sidecar's first config is start-up, not push latency
            self.pushes[mesh] += 1
            prior = self._pending.get(node)
            self._pending[node] = _Push(
                mesh, result.snapshot.versions(), [*(prior.changes if prior else ()), changed_at], now
            )

    def settle(self, node: str) -> None:
        """Observe the pending push of ``node`` if the sidecar has ACKed all of it."""
        push = self._pending.get(node)
        if push is None or self._status is None:
            return
        st = self._status.find(node)
        if st is None or not st.connected:
            return
        acked_at = []
        for type_name, version in push.versions.items():
            ts = st.types.get(type_name)
            if ts is None or not ts.sent:
                continue  # the sidecar never asked for this type (e.g. no routes)
            if ts.acked != version and not _nothing_to_send(type_name, ts.sent, ts.acked, version):
                return
            acked_at.append(ts.acked_at)
        if not acked_at:
            return
        done = max(acked_at)
        for changed in push.changes:
            self.push_latency[push.mesh].observe(max(0.0, done - changed))
        del self._pending[node]

    def _settle_all(self) -> None:
        now = time.time()
        for node in list(self._pending):
            self.settle(node)
            push = self._pending.get(node)
            if push is not None and now - push.pushed_at > PENDING_TTL_S:
                self.unacked[push.mesh] += len(push.changes)
                del self._pending[node]

    def _count_nacks(self, status: StatusRegistry) -> None:
        """Keep the NACK counter monotonic although the registry forgets deleted dataplanes."""
        for st in status.all():
            seen = self._nacks_seen.get(st.node_id, 0)
            new = st.nacks - seen if st.nacks >= seen else st.nacks
            if new > 0:
                self.nacks[_mesh_of(st.node_id)] += new
            self._nacks_seen[st.node_id] = st.nacks

    # -- output ----------------------------------------------------------------------
    def render(self, ctx: ControlPlaneContext | None = None, extra: Mapping[str, float] | None = None) -> str:
        lines: list[str] = []

        def family(name: str, kind: str, samples: Iterable[str]) -> None:
            body = list(samples)
            if body:
                lines.extend([f"# HELP {name} {HELP[name]}", f"# TYPE {name} {kind}", *body])

        family("meshline_control_plane_info", "gauge", [f'meshline_control_plane_info{{version="{__version__}"}} 1'])
        family("meshline_api_requests_total", "counter", [
            f"meshline_api_requests_total{{{_labels({'method': m, 'route': r, 'code': str(c)})}}} {n}"
            for (m, r, c), n in sorted(self.api_requests.items())
        ])
        family("meshline_api_request_duration_seconds", "histogram",
               self.api_latency.lines("meshline_api_request_duration_seconds", ""))
        if ctx is not None:
            self._settle_all()
            self._count_nacks(ctx.status)
            for mesh in ctx.model.mesh_names():  # present from 0, so rate() sees the first increase
                for counter in (self.pushes, self.nacks, self.unacked):
                    counter.setdefault(mesh, 0)
        family("meshline_xds_pushes_total", "counter",
               [f'meshline_xds_pushes_total{{mesh="{_escape(k)}"}} {n}' for k, n in sorted(self.pushes.items())])
        family("meshline_xds_push_latency_seconds", "histogram", [
            line for mesh, h in sorted(self.push_latency.items())
            for line in h.lines("meshline_xds_push_latency_seconds", f'mesh="{_escape(mesh)}"')
        ])
        family("meshline_xds_pushes_unacked_total", "counter",
               [f'meshline_xds_pushes_unacked_total{{mesh="{_escape(k)}"}} {n}' for k, n in sorted(self.unacked.items())])
        family("meshline_xds_nacks_total", "counter",
               [f'meshline_xds_nacks_total{{mesh="{_escape(k)}"}} {n}' for k, n in sorted(self.nacks.items())])
        if ctx is not None:
            self._render_dataplanes(ctx, family)
        for name, value in sorted(self.gauges.items()):
            lines.append(f"{name} {_num(value)}")
        lines += _extra_lines(extra or {})
        return "\n".join(lines) + "\n"

    @staticmethod
    def _render_dataplanes(ctx: ControlPlaneContext, family: Any) -> None:
        connected: dict[str, int] = defaultdict(int)
        for st in ctx.status.all():
            if st.connected:
                connected[_mesh_of(st.node_id)] += 1
        states: dict[tuple[str, str], int] = defaultdict(int)
        for mesh in ctx.model.mesh_names():
            connected.setdefault(mesh, 0)
            for key in ctx.model.resources(mesh):
                if key.kind == "Dataplane":
                    found = ctx.status.find(names.node_id(mesh, key.name))
                    states[(mesh, found.state() if found else "offline")] += 1
        errors: dict[str, int] = defaultdict(int)
        for node in ctx.results.errors():
            errors[_mesh_of(node)] += 1
        family("meshline_dataplanes_connected", "gauge",
               [f'meshline_dataplanes_connected{{mesh="{_escape(k)}"}} {n}' for k, n in sorted(connected.items())])
        family("meshline_dataplanes", "gauge", [
            f'meshline_dataplanes{{mesh="{_escape(k)}",state="{s}"}} {n}' for (k, s), n in sorted(states.items())
        ])
        family("meshline_dataplane_render_errors", "gauge", [
            f'meshline_dataplane_render_errors{{mesh="{_escape(k)}"}} {errors.get(k, 0)}' for k in sorted(connected)
        ])


def _mesh_of(node: str) -> str:
    try:
        return names.parse_node_id(node)[0]
    except ValueError:
        return ""


def _extra_lines(extra: Mapping[str, float]) -> list[str]:
    """Series other subsystems provide (e.g. certificate expiries), as gauges by family."""
    by_family: dict[str, list[str]] = defaultdict(list)
    for series, value in sorted(extra.items()):
        by_family[series.split("{", 1)[0]].append(f"{series} {value}")
    out: list[str] = []
    for name, samples in by_family.items():
        out += [f"# TYPE {name} gauge", *samples]
    return out


def metrics_text(ctx: ControlPlaneContext) -> str:
    provider = ctx.services.get("metrics_extra")
    extra = provider() if callable(provider) else {}
    return ctx.metrics.render(ctx, extra)


# -- Prometheus HTTP service discovery --------------------------------------------------


def _joined(values: Iterable[str]) -> str:
    return ",".join(sorted({v for v in values if v}))


def prometheus_targets(reconciler: Reconciler, meshes: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """One http_sd target group per dataplane with a metrics endpoint.

    Labels become every scraped series' target labels; ``__metrics_path__`` tells Prometheus
    the path. Offline dataplanes stay listed (Prometheus shows them as ``up == 0``) until
    they are deregistered.
    """
    wanted = set(meshes) if meshes is not None else None
    groups = []
    for mesh in sorted(reconciler.model.mesh_names()):
        if wanted is not None and mesh not in wanted:
            continue
        for key, res in sorted(reconciler.model.resources(mesh).items(), key=lambda kv: kv[0].name):
            spec = res.spec
            if key.kind != "Dataplane" or not isinstance(spec, DataplaneSpec) or spec.metrics is None:
                continue
            host = f"[{spec.address}]" if ":" in spec.address else spec.address
            labels = {
                "__metrics_path__": spec.metrics.path,
                "mesh": mesh,
                "dataplane": key.name,
                "service": _joined(i.service for i in spec.inbound),
                "version": _joined(i.tags.get("version", "") for i in spec.inbound),
                "zone": _joined(i.tags.get("zone", "") for i in spec.inbound),
            }
            groups.append({"targets": [f"{host}:{spec.metrics.port}"],
                           "labels": {k: v for k, v in labels.items() if v}})
    return groups


def _nothing_to_send(type_name: str, sent: str, acked: str, version: str) -> bool:
    """A type subscribed by name is not sent when only resources the sidecar has not asked for
    changed (xds.stream): its newest version never goes out, and the push is complete without it."""
    return type_name in _BY_NAME and sent == acked and sent != version


_BY_NAME = frozenset(SHORT[t] for t in BY_NAME)
