"""Inputs users already have, translated to Meshline routes at ``meshline apply``:
Gateway API ``HTTPRoute``/``GRPCRoute`` (GAMMA style) and SMI ``TrafficSplit``.

:func:`translators` returns the functions ControlPlaneContext.translators runs on each
applied document; each answers None for documents that are not its own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from meshline.core.dataplane import service_protocols
from meshline.core.errors import FieldProblem, ValidationError
from meshline.core.resource import KindRegistry, Resource
from meshline.policies.translate.common import KnownServices
from meshline.policies.translate.gateway import GROUP as GATEWAY_GROUP
from meshline.policies.translate.gateway import is_gateway_route, translate_gateway_route
from meshline.policies.translate.gateway_api import (
    is_gateway,
    is_gateway_attached_route,
    translate_attached_route,
    translate_gateway,
)
from meshline.policies.translate.smi import is_traffic_split, translate_traffic_split

if TYPE_CHECKING:
    from meshline.controlplane.context import ControlPlaneContext

Translator = Callable[[dict[str, Any]], list[Resource] | None]


def known_services(resources_of: Callable[[str], Mapping[Any, Resource]]) -> KnownServices:
    """Reads a mesh's resources (the control plane's read model) when asked."""

    def known(mesh: str) -> Mapping[str, str]:
        return service_protocols(r for r in resources_of(mesh).values() if r.kind == "Dataplane")

    return known


def translators(kinds: KindRegistry, known: KnownServices) -> list[Translator]:
    def ingress(doc: dict[str, Any]) -> list[Resource] | None:
        if is_gateway(doc):
            return translate_gateway(doc, kinds, known)
        return translate_attached_route(doc, kinds, known) if is_gateway_attached_route(doc) else None

    def gateway(doc: dict[str, Any]) -> list[Resource] | None:
        return translate_gateway_route(doc, kinds, known) if is_gateway_route(doc) else None

    def smi(doc: dict[str, Any]) -> list[Resource] | None:
        return translate_traffic_split(doc, kinds, known) if is_traffic_split(doc) else None

    def unsupported(doc: dict[str, Any]) -> list[Resource] | None:
        api = doc.get("apiVersion")
        group = api.split("/", 1)[0] if isinstance(api, str) else ""
        if group.endswith(".smi-spec.io") or group == GATEWAY_GROUP:
            what = "Gateway, HTTPRoute, GRPCRoute, TLSRoute and TCPRoute" if group == GATEWAY_GROUP else "split.smi-spec.io TrafficSplit"
            raise ValidationError([FieldProblem(
                "kind", f"{api} {doc.get('kind')} cannot be translated; Meshline accepts {what} from this API"
            )])
        return None

    return [ingress, gateway, smi, unsupported]


def install(ctx: ControlPlaneContext) -> None:
    """Wire the translators into a control plane (an Extensions.on_start hook)."""
    ctx.translators.extend(translators(ctx.kinds, known_services(ctx.model.resources)))
