"""Request bodies: strict JSON objects with declared fields and types (unknown fields are refused)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import safejson
from .errors import ApiError

_TYPES: dict[str, tuple[type, ...]] = {"string": (str,), "integer": (int,), "boolean": (bool,)}


@dataclass(frozen=True)
class Field:
    name: str
    kind: str  # "string" | "integer" | "boolean"
    required: bool = True
    max_length: int = 200
    pattern: str | None = None  # for the OpenAPI document only; semantic checks live in the core
    description: str = ""


@dataclass(frozen=True)
class BodySchema:
    fields: tuple[Field, ...]

    def json_schema(self) -> dict[str, Any]:
        properties: dict[str, Any] = {}
        for f in self.fields:
            prop: dict[str, Any] = {"type": f.kind}
            if f.kind == "string":
                prop["maxLength"] = f.max_length
            if f.pattern:
                prop["pattern"] = f.pattern
            if f.description:
                prop["description"] = f.description
            properties[f.name] = prop
        return {
            "type": "object",
            "properties": properties,
            "required": [f.name for f in self.fields if f.required],
            "additionalProperties": False,
        }

    def parse(self, raw: bytes) -> dict[str, Any]:
        """The body as a dict of declared fields, or an ApiError naming what is wrong."""
        document = safejson.loads(raw) if raw.strip() else {}
        if not isinstance(document, dict):
            raise ApiError("invalid_json", "the body must be a JSON object")
        known = {f.name: f for f in self.fields}
        unknown = sorted(set(document) - set(known))
        if unknown:
            raise ApiError("unknown_fields", "unknown fields: " + ", ".join(unknown), fields=unknown)
        problems: dict[str, str] = {}
        for f in self.fields:
            if f.name not in document:
                if f.required:
                    problems[f.name] = "required"
                continue
            value = document[f.name]
            if not isinstance(value, _TYPES[f.kind]) or (f.kind == "integer" and isinstance(value, bool)):
                problems[f.name] = f"must be a {f.kind}"
            elif isinstance(value, str) and len(value) > f.max_length:
                problems[f.name] = f"at most {f.max_length} characters"
        if problems:
            raise ApiError(
                "invalid_fields", "invalid fields: " + ", ".join(sorted(problems)), fields=problems
            )
        return document
