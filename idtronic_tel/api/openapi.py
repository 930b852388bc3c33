"""The OpenAPI 3.1 document, generated from the route table plus the response schemas below."""

from __future__ import annotations

import datetime as dt
import enum
import re
import typing
from typing import TYPE_CHECKING, Any

from ..core import views

if TYPE_CHECKING:
    from .routing import Route, Router

_STR = {"type": "string"}
_INT = {"type": "integer"}
_SIMPLE = {str: _STR, int: _INT, bool: {"type": "boolean"}}
_FORMATS = {dt.datetime: "date-time", dt.date: "date"}


def schema_of(view: type) -> dict[str, Any]:
    """The JSON Schema of a core view's answer (core/views.py): types from the annotations, the rest
    from each field's metadata."""
    properties: dict[str, Any] = {}
    for slot in views.slots(view):
        prop = {**_kind(slot.kind), **slot.schema}
        if slot.optional:
            if "enum" in prop:
                prop["enum"] = [*prop["enum"], None]
            else:
                prop["type"] = [prop["type"], "null"]
        if slot.description:
            prop["description"] = slot.description
        properties[slot.name] = prop
    return {
        "type": "object",
        "required": [s.name for s in views.slots(view) if not s.omit_none],
        "properties": properties,
        "additionalProperties": False,
    }


def _kind(kind: Any) -> dict[str, Any]:
    if kind in _FORMATS:
        return {"type": "string", "format": _FORMATS[kind]}
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return {"enum": [member.value for member in kind]}
    if typing.get_origin(kind) is tuple:
        return {"type": "array", "items": schema_of(typing.get_args(kind)[0])}
    return dict(_SIMPLE[kind])


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error", "message"],
        "properties": {
            "error": {"type": "string", "description": "stable machine-readable code"},
            "message": _STR,
            "attempts_remaining": _INT,
            "status": _STR,
            "notice": _STR,
            "max_resends": _INT,
            "fields": {"description": "per-field problems (object) or unknown field names (array)"},
        },
    },
    "Payment": schema_of(views.Payment),
    "Enrollment": schema_of(views.Enrollment),
    "EnrollmentStatus": _ref("Enrollment"),
    "Accepted": {"type": "object", "properties": {"status": _STR, "message": _STR}},
    "Session": schema_of(views.ProfileSession),
    "Profile": schema_of(views.Profile),
    "MerchantKey": schema_of(views.MerchantKey),
    "MerchantList": schema_of(views.MerchantList),
    "Lock": schema_of(views.Lock),
    "Suspension": schema_of(views.Suspension),
    "Notice": _ref("Suspension"),
    "Status": {
        "type": "object",
        "required": ["suspended", "links", "queues"],
        "properties": {
            "suspended": {"type": "boolean"},
            "links": {"type": "object"},
            "queues": {"type": "object"},
        },
    },
    "Health": {
        "type": "object",
        "required": ["status", "database", "listeners", "links"],
        "properties": {
            "status": {"enum": ["ok", "degraded", "down"]},
            "database": {"enum": ["up", "down"]},
            "listeners": {"type": "object", "additionalProperties": {"enum": ["up", "down"]}},
            "links": {"type": "object"},
            "worker": {
                "type": "object",
                "properties": {
                    "index": {"type": "integer"},
                    "pid": {"type": "integer"},
                    "workers": {"type": "integer"},
                },
            },
        },
    },
}

_SECURITY: dict[str, list[dict[str, list[str]]]] = {
    "merchant": [{"merchantKey": []}],
    "operator": [{"operatorKey": []}],
    "session": [{"profileSession": []}],
}


def document(router: Router) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for route in router.routes:
        if route.auth == "public":
            continue  # HTML pages: not part of the JSON API
        operation: dict[str, Any] = {
            "operationId": route.method.lower() + "_" + re.sub(r"\W+", "_", route.template).strip("_"),
            "summary": route.summary,
            "responses": {str(status): _response(name) for status, name in sorted(statuses(route).items())},
        }
        if route.auth in _SECURITY:
            operation["security"] = _SECURITY[route.auth]
        if route.body is not None and route.body.fields:
            operation["requestBody"] = {
                # A body of optional fields only may be left out (BodySchema.parse reads none as {}).
                "required": any(f.required for f in route.body.fields),
                "content": {"application/json": {"schema": route.body.json_schema()}},
            }
        params = re.findall(r"\{(\w+)\}", route.template)
        if params:
            operation["parameters"] = [
                {"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in params
            ]
        if route.auth == "merchant" and route.template == "/v1/payments":
            operation.setdefault("parameters", []).append(
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string", "minLength": 1, "maxLength": 200},
                }
            )
        paths.setdefault(route.template, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "idtronic-tel API", "version": "1"},
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "merchantKey": {"type": "http", "scheme": "bearer", "description": "a merchant API key"},
                "operatorKey": {"type": "http", "scheme": "bearer", "description": "the operator key"},
                "profileSession": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": "Session <session>",
                },
            },
        },
    }


def statuses(route: Route) -> dict[int, str]:
    """Every status the route can send: its own, plus those of the steps every request goes through
    (api/resource.py): the headers and query string read as text (400), authentication (401), the body
    (400, 413, 415, 422), the rate limits (429) and suspension (503)."""
    found = {400: "Error"}
    if route.auth in _SECURITY:
        found[401] = "Error"
    if route.body is not None:
        found |= {413: "Error", 415: "Error"}
        if route.body.fields:
            found[422] = "Error"
    if route.limited or route.auth == "merchant":
        found[429] = "Error"
    if route.suspendable:
        found[503] = "Error"
    return found | route.responses


def _response(name: str) -> dict[str, Any]:
    if not name:
        return {"description": "no content"}
    if name == "text":
        return {
            "description": "Prometheus text format",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    if name == "object":
        return {"description": "JSON", "content": {"application/json": {"schema": {"type": "object"}}}}
    return {
        "description": name,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}},
    }
