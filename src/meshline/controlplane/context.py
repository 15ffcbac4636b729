"""What API handlers and plugins may reach in a running control plane (no globals)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from meshline import __version__
from meshline.api.request_input import ApplyLimits
from meshline.controlplane.metrics import ControlPlaneMetrics
from meshline.controlplane.reconciler import Reconciler
from meshline.controlplane.status import StatusRegistry
from meshline.core.errors import ValidationError
from meshline.core.resource import KindRegistry, Resource
from meshline.store.base import Store
from meshline.xds import names

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
    sealers: list[Sealer] = field(default_factory=list)
    apply_limits: ApplyLimits = field(default_factory=ApplyLimits)
    version: str = __version__
    # filled by optional subsystems (CA, tokens, telemetry) for the API to reach
    services: dict[str, Any] = field(default_factory=dict)

    def translate(self, doc: object) -> list[Resource]:
        if isinstance(doc, dict):
            for translate in self.translators:
                out = translate(doc)
                if out is not None:
                    return out
        return [self.kinds.decode(doc)]

    async def validate_in_context(self, res: Resource, pending: Sequence[Resource] = ()) -> None:
        problems = []
        for check in self.validators:
            try:
                check(res, self, pending)
            except ValidationError as err:
                problems.extend(err.problems)
        if problems:
            raise ValidationError(problems, context=str(res.key))

    def for_storage(self, res: Resource, prior: Resource | None) -> Resource:
        """``res`` as the store may hold it: every API write goes through this."""
        for seal in self.sealers:
            res = seal(res, prior)
        return res

    def dataplane_status(self, r: Resource) -> dict[str, Any]:
        node = names.node_id(r.mesh, r.name)
        st = self.status.find(node)
        out: dict[str, Any] = st.to_json() if st else {"node": node, "state": "offline", "connected": False}
        err = self.reconciler.errors.get(node)
        if err:
            out["state"] = "render-error"
            out["renderError"] = err
        extra = self.services.get("dataplane_status_extra")
        if callable(extra):
            out.update(extra(r))
        return out
