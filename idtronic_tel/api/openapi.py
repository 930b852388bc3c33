"""The OpenAPI 3.1 document, generated from the route table plus the response schemas below."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .routing import Router

_TS = {"type": ["string", "null"], "format": "date-time"}
_STR = {"type": "string"}
_INT = {"type": "integer"}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error", "message"],
        "properties": {
            "error": {"type": "string", "description": "stable machine-readable code"},
            "message": {"type": "string"},
            "attempts_remaining": _INT,
            "status": _STR,
            "notice": _STR,
            "fields": {"description": "per-field problems (object) or unknown field names (array)"},
        },
    },
    "Payment": {
        "type": "object",
        "required": [
            "id",
            "status",
            "amount",
            "currency",
            "reference",
            "created_at",
            "expires_at",
            "validated_at",
            "sms",
            "attempts_remaining",
        ],
        "properties": {
            "id": _STR,
            "status": {"enum": ["pending", "validated", "failed", "expired", "cancelled"]},
            "amount": _INT,
            "currency": _STR,
            "reference": _STR,
            "description": _STR,
            "created_at": _TS,
            "expires_at": _TS,
            "validated_at": _TS,
            "sms": {"enum": ["queued", "submitted", "delivered", "undeliverable", "expired"]},
            "attempts_remaining": _INT,
        },
        "additionalProperties": False,
    },
    "Enrollment": {
        "type": "object",
        "required": ["identifier", "status"],
        "properties": {
            "identifier": {"type": "string", "pattern": r"^\d{10}$"},
            "status": {"const": "awaiting_callback"},
        },
    },
    "EnrollmentStatus": {
        "type": "object",
        "required": ["status", "next_call_at"],
        "properties": {
            "identifier": _STR,
            "status": {"enum": ["awaiting_callback", "calling", "active", "failed"]},
            "next_call_at": _TS,
        },
    },
    "Accepted": {"type": "object", "properties": {"status": _STR, "message": _STR}},
    "Session": {
        "type": "object",
        "required": ["session"],
        "properties": {"session": _STR, "expires_in": _INT},
    },
    "Profile": {
        "type": "object",
        "required": ["identifier", "last_name", "first_name", "birth_date", "mobile", "mobile_pending"],
        "properties": {
            "identifier": _STR,
            "last_name": _STR,
            "first_name": _STR,
            "birth_date": {"type": "string", "format": "date"},
            "mobile": _STR,
            "mobile_pending": {"type": ["string", "null"]},
            "card": {"type": ["string", "null"], "description": "at most the first 6 and last 4 digits"},
        },
    },
    "MerchantKey": {
        "type": "object",
        "required": ["id", "api_key"],
        "properties": {"id": _STR, "name": _STR, "domain": {"type": ["string", "null"]}, "api_key": _STR},
    },
    "MerchantList": {
        "type": "object",
        "required": ["merchants"],
        "properties": {"merchants": {"type": "array"}},
    },
    "Lock": {
        "type": "object",
        "required": ["identifier", "locked"],
        "properties": {"identifier": _STR, "locked": {"type": "boolean"}},
    },
    "Suspension": {
        "type": "object",
        "required": ["suspended"],
        "properties": {"suspended": {"type": "boolean"}, "notice": _STR},
    },
    "Notice": {
        "type": "object",
        "required": ["suspended", "notice"],
        "properties": {"suspended": {"type": "boolean"}, "notice": _STR},
    },
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
            "responses": {str(status): _response(name) for status, name in sorted(route.responses.items())},
        }
        if route.auth in _SECURITY:
            operation["security"] = _SECURITY[route.auth]
        if route.body is not None and route.body.fields:
            operation["requestBody"] = {
                "required": True,
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
                    "schema": {"type": "string", "maxLength": 200},
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
