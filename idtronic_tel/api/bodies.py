"""Request bodies: one JSON object of declared fields, checked against exactly the JSON Schema the OpenAPI
document publishes (compiled once with fastjsonschema). A refused body is `400 unknown_fields` or `422
invalid_fields` naming each field with what it expects; the core keeps only the semantic rules (check
digit, currency list, dates, phone numbers)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import fastjsonschema

from ..core.currencies import CODES
from ..core.merchants import MAX_OVERLAP_SECONDS
from . import safejson
from .errors import ApiError


@dataclass(frozen=True)
class Field:
    name: str
    schema: dict[str, Any]  # the value's JSON Schema
    expected: str  # what the 422 says when the value does not fit the schema
    required: bool = True

    def optional(self) -> Field:
        return Field(self.name, self.schema, self.expected, required=False)


def text(name: str, expected: str, max_length: int, min_length: int = 0, **keywords: Any) -> Field:
    limits = {"minLength": min_length} if min_length else {}
    return Field(name, {"type": "string", **limits, "maxLength": max_length, **keywords}, expected)


def digits(name: str, count: int, expected: str) -> Field:
    # [0-9], not \d: Python's \d takes every Unicode digit. The length bound keeps `$` honest (in Python it
    # also matches before a final line break).
    return text(name, expected, count, count, pattern=f"^[0-9]{{{count}}}$")


def _raise(problems: dict[str, str]) -> None:
    raise ApiError("invalid_fields", "invalid fields: " + ", ".join(sorted(problems)), fields=problems)


@dataclass(frozen=True)
class BodySchema:
    fields: tuple[Field, ...]
    _check: Any = field(init=False, repr=False, compare=False)
    _each: dict[str, Any] = field(init=False, repr=False, compare=False)
    _integers: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # The whole body in one call on the usual path; field by field only to name every problem.
        object.__setattr__(self, "_check", fastjsonschema.compile(self.json_schema()))
        object.__setattr__(self, "_each", {f.name: fastjsonschema.compile(f.schema) for f in self.fields})
        integers = tuple(f.name for f in self.fields if f.schema.get("type") == "integer")
        object.__setattr__(self, "_integers", integers)

    def json_schema(self) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": {f.name: f.schema for f in self.fields},
            "required": [f.name for f in self.fields if f.required],
            "additionalProperties": False,
        }

    def parse(self, raw: bytes) -> dict[str, Any]:
        """The body as a dict of declared fields, or an ApiError naming what is wrong."""
        document = safejson.loads(raw) if raw.strip() else {}
        if not isinstance(document, dict):
            raise ApiError("invalid_json", "the body must be a JSON object")
        if document.keys() - self._each.keys():
            unknown = sorted(document.keys() - self._each.keys())
            raise ApiError("unknown_fields", "unknown fields: " + ", ".join(unknown), fields=unknown)
        try:
            self._check(document)
        except fastjsonschema.JsonSchemaException:
            _raise(self._problems(document))
        for name in self._integers:  # JSON Schema counts 1.0 as an integer: the core gets an int
            if isinstance(document.get(name), float):
                document[name] = int(document[name])
        return document

    def _problems(self, document: dict[str, Any]) -> dict[str, str]:
        problems: dict[str, str] = {}
        for f in self.fields:
            if f.name not in document:
                if f.required:
                    problems[f.name] = "required"
                continue
            try:
                self._each[f.name](document[f.name])
            except fastjsonschema.JsonSchemaException:
                problems[f.name] = f.expected
        return problems


EMPTY = BodySchema(())
IDENTIFIER = digits("identifier", 10, "a 10-digit identification number")
CODE = digits("token", 6, "6 digits")
IDENTITY = (
    text("last_name", "1 to 100 printable characters", 100, 1),
    text("first_name", "1 to 100 printable characters", 100, 1),
    text("birth_date", "a date YYYY-MM-DD", 10, 10, pattern="^[0-9]{4}-[0-9]{2}-[0-9]{2}$"),
    text("mobile", "a mobile number, national or international", 30, 1),
)
ENROLL = BodySchema((*IDENTITY, digits("card_first8", 8, "exactly 8 digits")))
ADMIN_ENROLL = BodySchema((*ENROLL.fields, Field("channel", {"enum": ["phone", "fax"]}, "phone or fax")))
AMOUNT = {"type": "integer", "minimum": 1, "maximum": 10**12, "description": "minor units"}
PAYMENT = BodySchema(
    (
        IDENTIFIER,
        Field("amount", AMOUNT, "an integer number of minor units, greater than 0"),
        Field("currency", {"enum": sorted(CODES)}, "an ISO 4217 currency code such as EUR"),
        text("reference", "1 to 200 characters", 200, 1),
        text("description", "at most 500 characters", 500).optional(),
    )
)
TOKEN = BodySchema((CODE,))
PROFILE_CHALLENGE = BodySchema((IDENTIFIER,))
SESSION = BodySchema((IDENTIFIER, CODE))
PROFILE_PATCH = BodySchema(tuple(f.optional() for f in IDENTITY))
MERCHANT = BodySchema(
    (
        text("name", "1 to 200 characters", 200, 1),
        text("domain", "a DNS name such as shop.example.fr", 253, 1).optional(),
    )
)
REASON = BodySchema((text("reason", "at most 500 characters", 500).optional(),))
ROTATE_KEY = BodySchema(
    (
        Field(
            "overlap_seconds",
            {"type": "integer", "minimum": 0, "maximum": MAX_OVERLAP_SECONDS},
            f"an integer number of seconds, 0 to {MAX_OVERLAP_SECONDS} (7 days)",
        ).optional(),
    )
)
SUSPEND = BodySchema(
    (
        text("notice", "at most 1000 characters", 1000),
        digits("cardholder", 10, "a 10-digit identification number").optional(),
        text("merchant", "a merchant id", 40, 1).optional(),
    )
)
