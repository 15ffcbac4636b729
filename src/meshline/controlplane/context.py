"""What API handlers and plugins may reach in a running control plane (no globals)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from meshline.controlplane.apply_limits import ApplyLimits
from meshline.controlplane.metrics import ControlPlaneMetrics
from meshline.controlplane.read_model import ReadModel
from meshline.controlplane.reconciler import Reconciler
from meshline.controlplane.results import RenderResults
from meshline.controlplane.shared_status import CERTIFICATE_PART, StatusPublisher, merged_status
from meshline.core import versions
from meshline.core.errors import FieldProblem, ValidationError
from meshline.core.labels import RESERVED_PREFIX
from meshline.core.resource import KindRegistry, Resource, ResourceKey
from meshline.render.policy_kind import MeshCheck, MeshView, run_mesh_checks
from meshline.store.base import Status, Store
from meshline.xds import names
from meshline.xds.status import StatusRegistry

XDS_CA_PEM = "xds_ca_pem"  # ctx.services key: the PEM agents verify the xDS server with

# Turns one user document (maybe Gateway API / SMI) into native resources.
Translator = Callable[[dict[str, Any]], list[Resource] | None]
# Checks a resource against the others (e.g. references to unknown services).
ContextValidator = Callable[[Resource, "ControlPlaneContext", Sequence[Resource]], None]
# Turns a resource into what may be stored (e.g. seals a secret in it), given the stored one.
Sealer = Callable[[Resource, Resource | None], Resource]


@dataclass
class ControlPlaneContext:
    kinds: KindRegistry
    store: Store
    reconciler: Reconciler
    status: StatusRegistry
    metrics: ControlPlaneMetrics = field(default_factory=ControlPlaneMetrics)
    translators: list[Translator] = field(default_factory=list)
    validators: list[ContextValidator] = field(default_factory=list)
    # (kind, check): the policy kinds' apply-time checks against the rest of their mesh
    mesh_checks: list[tuple[str, MeshCheck]] = field(default_factory=list)
    sealers: list[Sealer] = field(default_factory=list)
    apply_limits: ApplyLimits = field(default_factory=ApplyLimits)
    version: str = field(default_factory=versions.current)
    # filled by optional subsystems (CA, tokens, telemetry) for the API to reach
    services: dict[str, Any] = field(default_factory=dict)
    # Shared status (see shared_status): this replica's writer, and when another's goes silent.
    publisher: StatusPublisher | None = None
    replica_ttl: float = 15.0
    # The last MeshView built: one apply checks each of its documents against the same view.
    _view: tuple[Sequence[Resource], str, int, MeshView] | None = field(default=None, repr=False)

    @property
    def model(self) -> ReadModel:
        """Every resource in memory (what validators and subsystems query, never the store)."""
        return self.reconciler.model

    @property
    def results(self) -> RenderResults:
        """Per dataplane its last render and render error; per mesh its rendered snapshot."""
        return self.reconciler.results

    def translate(self, doc: object) -> list[Resource]:
        if isinstance(doc, dict):
            for translate in self.translators:
                out = translate(doc)
                if out is not None:
                    return out
        return [self.kinds.decode(doc)]

    async def validate_in_context(self, res: Resource, pending: Sequence[Resource] = ()) -> None:
        problems = reserved_label_problems(res, self.store.stamp_labels)
        for check in self.validators:
            try:
                check(res, self, pending)
            except ValidationError as err:
                problems.extend(err.problems)
        if res.mesh and any(c.runs_on(kind, res) for kind, c in self.mesh_checks):
            problems.extend(run_mesh_checks(res, self.mesh_view(res.mesh, pending), self.mesh_checks))
        if problems:
            raise ValidationError(problems, context=str(res.key))

    def mesh_view(self, mesh: str, pending: Sequence[Resource] = ()) -> MeshView:
        """The mesh as ``pending`` (one apply's documents) would leave it; built once per apply
        (a 4,000-document apply built it per document: quadratic, tens of seconds)."""
        revision = self.reconciler.revision
        if self._view is not None:
            held, at_mesh, at_revision, view = self._view
            if held is pending and at_mesh == mesh and at_revision == revision:
                return view
        view = MeshView.build(mesh, self.model.resources(mesh).values(), pending)
        if pending:
            self._view = (pending, mesh, revision, view)
        return view

    def for_storage(self, res: Resource, prior: Resource | None) -> Resource:
        """``res`` as the store may hold it: every API write goes through this."""
        for seal in self.sealers:
            res = seal(res, prior)
        return res

    async def dataplane_statuses(self, dataplanes: Sequence[Resource]) -> dict[ResourceKey, dict[str, Any]]:
        """What every replica agrees on about these dataplanes (one store read per mesh)."""
        if not dataplanes:
            return {}
        stored: dict[ResourceKey, Status] = {}
        if len(dataplanes) == 1:  # e.g. an agent's registration check: its own row, not the mesh's
            stored = await self.store.list_status("Dataplane", dataplanes[0].mesh, dataplanes[0].name)
        else:
            for mesh in sorted({r.mesh for r in dataplanes}):
                stored.update(await self.store.list_status("Dataplane", mesh))
        ages = await self.store.replica_ages()
        return {r.key: self.dataplane_status(r, stored.get(r.key), ages) for r in dataplanes}

    def dataplane_status(
        self, r: Resource, stored: Status | None = None, ages: Mapping[str, float] | None = None
    ) -> dict[str, Any]:
        node = names.node_id(r.mesh, r.name)
        me = self.publisher.replica if self.publisher is not None else ""
        out, replica = merged_status(node, self.status.find(node), stored, ages or {}, me, self.replica_ttl)
        out["replica"] = replica
        if stored and stored.get(CERTIFICATE_PART):
            out.update(stored[CERTIFICATE_PART])
        err = self.results.error(node)
        if err:
            out["state"] = "render-error"
            out["renderError"] = err
        extra = self.services.get("dataplane_status_extra")
        if callable(extra):
            out.update(extra(r))
        return out


def reserved_label_problems(res: Resource, own: Mapping[str, str]) -> list[FieldProblem]:
    """Labels under meshline.io/ are the control plane's: a write may repeat them (a resource
    read and applied again), never change them."""
    return [
        FieldProblem(f"labels.{key}", f"is set by the control plane (here: '{own[key]}'); remove it"
                     if key in own else "is reserved for the control plane; remove it")
        for key, value in sorted(res.labels.items())
        if key.startswith(RESERVED_PREFIX) and own.get(key) != value
    ]  # fmt: skip
