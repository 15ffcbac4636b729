"""The few API routes only the dashboard needs; everything else it reads through the routes
the CLI uses.

* ``GET /api/v1/dashboard/session``: who the token is (so a read-only sign-in gets no edit
  controls; the API refuses its writes anyway) and where Grafana is, if configured
  (``MESHLINE_GRAFANA_URL``), with the uids of Meshline's Grafana dashboards;
* ``GET /api/v1/meshes/{mesh}/policies/{kind}/{name}/dataplanes``: the dataplanes a policy
  shapes, where and why (the reconciler's last render of each, as ``meshline inspect`` reads it);
* ``GET /api/v1/meshes/{mesh}/services/{service}/dataplanes``: a service's instances and its
  callers (dataplanes with an outbound to it), with status, from the reconciler's in-memory
  read model: the service page's refresh, without listing (and decoding) every dataplane;
* ``POST /api/v1/dashboard/yaml``: the editor's YAML read as the CLI reads a file
  (:mod:`meshline.core.safe_yaml`), with the line of every field path, so the API's
  validation errors (which name fields) can be shown at their line. It only parses: the page
  then calls ``/api/v1/apply`` (``?dryRun=true`` first), like ``meshline apply -f``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

import yaml
from aiohttp import web

from meshline.api.request_input import json_body
from meshline.api.routes import Route
from meshline.api.server import CTX, principal, section_json
from meshline.controlplane.context import ControlPlaneContext
from meshline.controlplane.unknown_services import known_services
from meshline.core import safe_yaml
from meshline.core.dataplane import DataplaneSpec
from meshline.core.errors import FieldProblem, NotFound, Unavailable, ValidationError
from meshline.core.resource import Resource, ResourceKey
from meshline.core.selectors import Match, SelectorSpec, match_policy
from meshline.policies import kinds as policy_kinds
from meshline.render.policy_kind import Merge
from meshline.render.sections import SectionId
from meshline.xds import names


def _match_at(policy: Resource, section: SectionId | None, dp: Resource,
              known: Callable[[], set[str]]) -> Match | None:
    """Whether ``policy`` selects this sidecar section, as the framework resolves it: an
    outbound by the dataplane's tags and the service called, an inbound by its tags."""
    spec, own = policy.spec, dp.spec
    if section is None or section.proxy != "sidecar" or not isinstance(spec, SelectorSpec):
        return None
    if not isinstance(own, DataplaneSpec):
        return None
    if section.role.endswith("outbound"):
        service = section_json(section, dp, known)["section"].get("service")
        return match_policy(policy, own.tag_sets(), {"service": service}) if service else None
    if section.role == "inbound":
        inbound = next((i for i in own.inbound if i.port == section.port), None)
        if inbound is None or not spec.sources:
            return None
        best = max((d for d in spec.destinations if d.matches(inbound.tags)), key=lambda d: d.specificity(), default=None)
        return Match(policy, max(spec.sources, key=lambda s: s.specificity()), best) if best is not None else None
    return None


# uid of each dashboard in telemetry/grafana/*.json, by the page that links to it
GRAFANA_DASHBOARDS = {"mesh": "meshline-mesh", "service": "meshline-service", "dataplane": "meshline-dataplane"}


def _json(data: Any) -> web.Response:
    return web.json_response(data, dumps=lambda d: json.dumps(d, separators=(",", ":")))


class DashboardApi:
    def __init__(self, grafana_url: str = "") -> None:
        self.grafana_url = grafana_url.rstrip("/")
        self.ctx: ControlPlaneContext | None = None  # set when the control plane starts

    def started(self, ctx: ControlPlaneContext) -> None:
        self.ctx = ctx

    async def session(self, request: web.Request) -> web.Response:
        p = principal(request)
        can_write = not p.read_only and p.service is None
        return _json({
            "principal": {"name": p.name, "mesh": p.mesh, "readOnly": p.read_only, "canWrite": can_write},
            "grafana": {"url": self.grafana_url, "dashboards": GRAFANA_DASHBOARDS} if self.grafana_url else None,
        })  # fmt: skip

    async def policy_dataplanes(self, request: web.Request) -> web.Response:
        mesh, kind, name = (request.match_info[k] for k in ("mesh", "kind", "name"))
        principal(request).check_read(mesh)
        rec = self._ctx(mesh).reconciler
        items = []
        for dp in sorted(rec.model.of_kind(mesh, "Dataplane"), key=lambda r: r.name):
            result = rec.results.get(names.node_id(mesh, dp.name))
            for a in result.applied if result is not None else ():
                if a.kind == kind and a.name == name:
                    items.append({"dataplane": dp.name, "target": a.target, "reason": a.reason})
        return _json({"kind": kind, "name": name, "items": items})

    async def policy_outranked(self, request: web.Request) -> web.Response:
        """Where the policy matched but lost to a more specific one of its kind: for a kind
        where the most specific policy alone applies, each section another policy of the kind
        shaped that this one also selects (the render applied the best match there, so this
        one lost). Empty for kinds where every match applies."""
        mesh, kind, name = (request.match_info[k] for k in ("mesh", "kind", "name"))
        principal(request).check_read(mesh)
        rec = self._ctx(mesh).reconciler
        ours = rec.model.get(ResourceKey(kind, mesh, name))
        policy_kind = next((k for k in policy_kinds() if k.name == kind), None)
        items: list[dict[str, Any]] = []
        if ours is None or policy_kind is None or policy_kind.merge is not Merge.MOST_SPECIFIC:
            return _json({"kind": kind, "name": name, "items": items})
        live = rec.model.resources(mesh).values()

        @functools.cache
        def known() -> set[str]:
            return known_services(live) | {r.name for r in live if r.kind == "Service"}

        for dp in sorted(rec.model.of_kind(mesh, "Dataplane"), key=lambda r: r.name):
            result = rec.results.get(names.node_id(mesh, dp.name))
            for a in result.applied if result is not None else ():
                if a.kind != kind or a.name == name:
                    continue
                match = _match_at(ours, a.section, dp, known)
                if match is not None:
                    items.append({"dataplane": dp.name, "target": a.target, "reason": match.reason(),
                                  "winner": a.name, "winnerReason": a.reason})
        return _json({"kind": kind, "name": name, "items": items})

    async def service_dataplanes(self, request: web.Request) -> web.Response:
        mesh, service = request.match_info["mesh"], request.match_info["service"]
        principal(request).check_read(mesh)
        ctx = self._ctx(mesh)
        instances, callers = [], []
        for r in sorted(ctx.reconciler.model.of_kind(mesh, "Dataplane"), key=lambda r: r.name):
            spec = r.spec
            if r.kind != "Dataplane" or not isinstance(spec, DataplaneSpec):
                continue
            if service in spec.services():
                instances.append(r)
            elif any(o.service == service for o in spec.outbound):
                callers.append(r)
        statuses = await ctx.dataplane_statuses([*instances, *callers])

        def item(r: Resource) -> dict[str, Any]:
            return {**r.to_json(), "status": statuses[r.key]}

        return _json({"instances": [item(r) for r in instances], "callers": [item(r) for r in callers]})

    def _ctx(self, mesh: str) -> ControlPlaneContext:
        if self.ctx is None:
            raise Unavailable("the control plane is starting; retry")
        if self.ctx.reconciler.model.mesh(mesh) is None:
            raise NotFound(f"mesh '{mesh}' does not exist; `meshline get meshes` lists what exists")
        return self.ctx

    async def parse_yaml(self, request: web.Request) -> web.Response:
        principal(request)  # any signed-in caller: parsing reads nothing
        body = await json_body(request, request.app[CTX].apply_limits.bytes, "YAML")
        text = body.get("text") if isinstance(body, dict) else None
        if not isinstance(text, str):
            raise ValidationError([FieldProblem("text", "must be the YAML text, a string")])
        try:
            docs, lines = safe_yaml.load_all_with_lines(text)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f"line {mark.line + 1}" if mark is not None else "YAML"
            problem = getattr(err, "problem", None) or str(err)
            raise ValidationError([FieldProblem(where, str(problem))], context="not valid YAML") from None
        kept = [(d, ln) for d, ln in zip(docs, lines, strict=True) if d is not None]
        return _json({"documents": [d for d, _ in kept], "lines": [ln for _, ln in kept]})

    def routes(self) -> list[Route]:
        return [
            Route("GET", "/api/v1/dashboard/session", self.session,
                  "Who this token is (may it change resources?) and the Grafana the dashboard links to"),
            Route("GET", "/api/v1/meshes/{mesh}/policies/{kind}/{name}/dataplanes", self.policy_dataplanes,
                  "The dataplanes a policy shapes, where and why (as the last render applied it)", codes=(404,)),
            Route("GET", "/api/v1/meshes/{mesh}/policies/{kind}/{name}/outranked", self.policy_outranked,
                  "Where a policy matched but a more specific one of its kind applied instead", codes=(404,)),
            Route("GET", "/api/v1/meshes/{mesh}/services/{service}/dataplanes", self.service_dataplanes,
                  "A service's instances and its callers' dataplanes, with their status", codes=(404,)),
            Route("POST", "/api/v1/dashboard/yaml", self.parse_yaml,
                  "Read YAML documents as `meshline apply -f` does, with the line of each field path",
                  body={"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
                  codes=(413, 422)),
        ]  # fmt: skip
