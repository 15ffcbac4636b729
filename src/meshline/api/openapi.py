"""The OpenAPI 3.1 document, built from the kind registry so it never drifts from the schemas."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from meshline import __version__
from meshline.api.routes import Route
from meshline.core.resource import KindRegistry

_REASONS = {
    200: "ok", 201: "created", 401: "no valid token", 403: "the token may not do this",
    404: "not found (the message says what exists)", 409: "a conflicting write (read again and retry)",
    413: "more than one apply may carry (the message names the limit)",
    422: "invalid input (the problems name each field)",
}  # fmt: skip


def _envelope(kind: str, spec_ref: str, mesh_scoped: bool) -> dict[str, Any]:
    props: dict[str, Any] = {
        "kind": {"const": kind},
        "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"},
        "spec": {"anyOf": [{"$ref": spec_ref}, {"type": "null"}], "description": "null or left out: the defaults"},
        "version": {"type": "integer", "readOnly": True},
    }
    required = ["kind", "name"]
    if mesh_scoped:
        props["mesh"] = {"type": "string"}
        required.append("mesh")
    return {"type": "object", "properties": props, "required": required}


def openapi_document(kinds: KindRegistry, routes: Iterable[Route] = ()) -> dict[str, Any]:
    """``routes``: what subsystems added (each documents itself, see api.routes)."""
    schemas: dict[str, Any] = {
        "Error": {
            "type": "object",
            "properties": {
                "error": {"type": "string"},
                "message": {"type": "string"},
                "problems": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"path": {"type": "string"}, "message": {"type": "string"}},
                    },
                },
            },
        }
    }
    paths: dict[str, Any] = {}
    err = {
        "description": "error",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }

    def errors(*codes: int) -> dict[str, Any]:
        """The error responses an operation can give: each code the server really returns."""
        return {str(c): {**err, "description": _REASONS[c]} for c in sorted({401, 403, *codes})}
    for info in kinds:
        if info.internal:
            continue
        spec_schema = info.spec.model_json_schema(by_alias=True, ref_template="#/components/schemas/{model}")
        for name, sub in spec_schema.pop("$defs", {}).items():
            schemas.setdefault(name, sub)
        schemas[f"{info.kind}Spec"] = spec_schema
        schemas[info.kind] = _envelope(info.kind, f"#/components/schemas/{info.kind}Spec", info.mesh_scoped)
        # a PUT body may leave out kind, name and mesh: the URL says them
        schemas[f"{info.kind}Write"] = {**schemas[info.kind], "required": []}
        ref = {"$ref": f"#/components/schemas/{info.kind}"}
        write_ref = {"$ref": f"#/components/schemas/{info.kind}Write"}
        one = {"description": info.kind, "content": {"application/json": {"schema": ref}}}
        many = {
            "description": f"{info.plural}",
            "content": {
                "application/json": {
                    "schema": {"type": "object", "properties": {"items": {"type": "array", "items": ref}}}
                }
            },
        }
        base = "/api/v1/meshes/{mesh}" if not info.mesh_scoped else f"/api/v1/meshes/{{mesh}}/{info.plural}"
        item = base if not info.mesh_scoped else base + "/{name}"
        params = [{"name": "mesh", "in": "path", "required": True, "schema": {"type": "string"}}]
        if info.mesh_scoped:
            params.append({"name": "name", "in": "path", "required": True, "schema": {"type": "string"}})
            paths[base] = {
                "get": {
                    "summary": f"List {info.plural}",
                    "tags": [info.kind],
                    "parameters": params[:1],
                    "responses": {"200": many, **errors(404)},
                }
            }
        else:
            paths["/api/v1/meshes"] = {
                "get": {"summary": "List meshes", "tags": [info.kind], "responses": {"200": many, **errors()}}
            }
        if_match = {
            "name": "If-Match",
            "in": "header",
            "required": False,
            "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"},
            "description": "refuse the write (409) unless the stored version is this one (422 if not a version)",
        }
        paths[item] = {
            "get": {
                "summary": f"Get a {info.kind}",
                "tags": [info.kind],
                "parameters": params,
                "responses": {"200": one, **errors(404)},
            },
            "put": {
                "summary": f"Create or update a {info.kind}",
                "tags": [info.kind],
                "parameters": [*params, if_match],
                "requestBody": {"required": True, "content": {"application/json": {"schema": write_ref}}},
                "responses": {"200": one, "201": one, **errors(404, 409, 422)},
            },
            "delete": {
                "summary": f"Delete a {info.kind}",
                "tags": [info.kind],
                "parameters": [*params, if_match],
                "responses": {"200": {"description": "deleted"}, **errors(404, 409, 422)},
            },
        }
    paths["/api/v1/apply"] = {
        "post": {
            "summary": "Validate and write several resources in one transaction (all or nothing); at most"
            " MESHLINE_APPLY_MAX_DOCUMENTS documents (5000) and MESHLINE_APPLY_MAX_BYTES (8 MiB); with"
            " dryRun=true nothing is written and the answer says which dataplanes' configs would change",
            "parameters": [{"name": "dryRun", "in": "query", "required": False,
                            "schema": {"type": "string", "enum": ["", "true", "false", "1", "0"]}}],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {"resources": {"type": "array", "items": {"type": "object"}}},
                        }
                    }
                },
            },
            "responses": {"200": {"description": "applied"}, **errors(404, 409, 413, 422)},
        }
    }
    paths["/api/v1/meshes/{mesh}/sync"] = {
        "get": {
            "summary": "How far rendering got and what each dataplane ACKed (`meshline apply --wait` polls it)",
            "parameters": [{"name": "mesh", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": {"description": "sync state"}, **errors()},
        }
    }
    paths["/api/v1/meshes/{mesh}/dataplanes/{name}/removal"] = {
        "get": {
            "summary": "Whether every caller's sidecar ACKed a config without this instance (graceful stop, `meshline drain`)",
            "parameters": [
                {"name": "mesh", "in": "path", "required": True, "schema": {"type": "string"}},
                {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
                {"name": "service", "in": "query", "required": True, "schema": {"type": "string"}},
                {"name": "address", "in": "query", "required": True, "schema": {"type": "string"}},
                {"name": "port", "in": "query", "required": True, "schema": {"type": "integer"}},
            ],
            "responses": {"200": {"description": "removal state"}, **errors(403, 422)},
        }
    }
    paths["/api/v1/meshes/{mesh}/dataplanes/{name}/inspect"] = {
        "get": {
            "summary": "A dataplane's status, the policies that apply to it and why, and its Envoy config",
            "parameters": [
                {"name": "mesh", "in": "path", "required": True, "schema": {"type": "string"}},
                {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
            ],
            "responses": {"200": {"description": "inspection"}, **errors(404)},
        }
    }
    paths["/api/v1/health"] = {
        "get": {"summary": "Liveness (no token needed)", "security": [], "responses": {"200": {"description": "ok"}}}
    }
    for route in routes:
        if not route.summary:
            continue
        params = [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
                  for n in re.findall(r"\{(\w+)\}", route.path)]
        op: dict[str, Any] = {"summary": route.summary, "tags": ["subsystems"], "parameters": [*params, *route.query],
                              "responses": {"200": {"description": "ok"}, **errors(*route.codes)}}
        if route.body is not None:
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": route.body}}}
            op["responses"]["201"] = {"description": "created"}
        paths.setdefault(route.path, {})[route.method.lower()] = op  # fmt: skip
    paths["/api/v1/kinds"] = {
        "get": {"summary": "Resource kinds", "responses": {"200": {"description": "kinds"}, **errors()}}
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Meshline control plane API", "version": __version__},
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": paths,
    }
