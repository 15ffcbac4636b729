"""The OpenAPI 3.1 document, built from the kind registry so it never drifts from the schemas."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from meshline import __version__
from meshline.api.routes import Route
from meshline.core.resource import KindRegistry


def _envelope(kind: str, spec_ref: str, mesh_scoped: bool) -> dict[str, Any]:
    props: dict[str, Any] = {
        "kind": {"const": kind},
        "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"},
        "spec": {"$ref": spec_ref},
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
    for info in kinds:
        if info.internal:
            continue
        spec_schema = info.spec.model_json_schema(by_alias=True, ref_template="#/components/schemas/{model}")
        for name, sub in spec_schema.pop("$defs", {}).items():
            schemas.setdefault(name, sub)
        schemas[f"{info.kind}Spec"] = spec_schema
        schemas[info.kind] = _envelope(info.kind, f"#/components/schemas/{info.kind}Spec", info.mesh_scoped)
        ref = {"$ref": f"#/components/schemas/{info.kind}"}
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
                    "responses": {"200": many, "404": err},
                }
            }
        else:
            paths["/api/v1/meshes"] = {
                "get": {"summary": "List meshes", "tags": [info.kind], "responses": {"200": many}}
            }
        if_match = {
            "name": "If-Match",
            "in": "header",
            "required": False,
            "schema": {"type": "integer"},
            "description": "refuse the write (409) unless the stored version is this one",
        }
        paths[item] = {
            "get": {
                "summary": f"Get a {info.kind}",
                "tags": [info.kind],
                "parameters": params,
                "responses": {"200": one, "404": err},
            },
            "put": {
                "summary": f"Create or update a {info.kind}",
                "tags": [info.kind],
                "parameters": [*params, if_match],
                "requestBody": {"required": True, "content": {"application/json": {"schema": ref}}},
                "responses": {"200": one, "201": one, "409": err, "422": err},
            },
            "delete": {
                "summary": f"Delete a {info.kind}",
                "tags": [info.kind],
                "parameters": [*params, if_match],
                "responses": {"200": {"description": "deleted"}, "404": err, "409": err},
            },
        }
    paths["/api/v1/apply"] = {
        "post": {
            "summary": "Validate and write several resources (all or nothing on validation)",
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
            "responses": {"200": {"description": "applied"}, "422": err},
        }
    }
    paths["/api/v1/meshes/{mesh}/dataplanes/{name}/inspect"] = {
        "get": {
            "summary": "A dataplane's status, the policies that apply to it and why, and its Envoy config",
            "parameters": [
                {"name": "mesh", "in": "path", "required": True, "schema": {"type": "string"}},
                {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
            ],
            "responses": {"200": {"description": "inspection"}, "404": err},
        }
    }
    paths["/api/v1/health"] = {"get": {"summary": "Liveness", "responses": {"200": {"description": "ok"}}}}
    for route in routes:
        if not route.summary:
            continue
        params = [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
                  for n in re.findall(r"\{(\w+)\}", route.path)]
        paths.setdefault(route.path, {})[route.method.lower()] = {
            "summary": route.summary, "tags": ["subsystems"], "parameters": params,
            "responses": {"200": {"description": "ok"}, "401": err, "403": err},
        }  # fmt: skip
    paths["/api/v1/kinds"] = {
        "get": {"summary": "Resource kinds", "responses": {"200": {"description": "kinds"}}}
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
