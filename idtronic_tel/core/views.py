"""What the core answers about each resource, one frozen dataclass per shape. The HTTP answers (`wire`)
and the OpenAPI schemas (api/openapi.py, `schema_of`) are derived from these classes and their field
metadata, so each field of the contract (docs/api.md) is written once, here."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from .states import CardholderStatus, PaymentStatus


@dataclass(frozen=True)
class About:
    """A field's documentation: its description, extra JSON Schema keywords (pattern...), and whether a
    None value is left out of the answer (and the field out of the schema's `required`)."""

    description: str = ""
    omit_none: bool = False
    schema: dict[str, Any] = dataclasses.field(default_factory=dict)


def about(description: str = "", omit_none: bool = False, **schema: Any) -> About:
    return About(description, omit_none, schema)


class SmsShown(enum.StrEnum):
    """A payment's latest SMS as the merchant sees it: "sending" is internal, still queued to them."""

    QUEUED = "queued"
    SUBMITTED = "submitted"
    DELIVERED = "delivered"
    UNDELIVERABLE = "undeliverable"
    EXPIRED = "expired"

    @classmethod
    def of(cls, state: str | None) -> SmsShown:
        return cls.QUEUED if state in (None, "sending") else cls(state)


@dataclass(frozen=True)
class Payment:
    id: Annotated[str, about("pay_...")]
    status: PaymentStatus
    amount: Annotated[int, about("minor units of the currency")]
    currency: Annotated[str, about("ISO 4217 code")]
    reference: Annotated[str, about("the merchant's own order reference")]
    description: str
    created_at: dt.datetime
    expires_at: Annotated[dt.datetime, about("the end of the current code")]
    validated_at: dt.datetime | None
    sms: Annotated[SmsShown, about("the delivery state of the payment's latest SMS")]
    attempts_remaining: Annotated[int, about("wrong codes left")]


@dataclass(frozen=True)
class Enrollment:
    identifier: Annotated[str, about("the identification number", pattern="^[0-9]{10}$")]
    status: CardholderStatus
    next_call_at: Annotated[dt.datetime | None, about("the next call while one is waiting")]


@dataclass(frozen=True)
class Profile:
    """The cardholder's personal section."""

    identifier: str
    last_name: str
    first_name: str
    birth_date: dt.date
    mobile: str
    mobile_pending: Annotated[str | None, about("a new number waiting for its callback")]
    card: Annotated[str | None, about("at most the first 6 and last 4 digits")]


@dataclass(frozen=True)
class ProfileSession:
    session: Annotated[str, about("send as Authorization: Session <session>")]
    expires_in: Annotated[int, about("seconds of inactivity before it ends")]


@dataclass(frozen=True)
class Lock:
    identifier: str
    locked: bool


@dataclass(frozen=True)
class MerchantKey:
    """A merchant with its new key: shown once."""

    id: Annotated[str, about("mch_...")]
    name: str
    domain: Annotated[str | None, about("the web domain its SMS codes are bound to")]
    api_key: Annotated[str, about("shown only in this answer")]
    previous_key_valid_until: Annotated[
        dt.datetime | None,
        about("rotate-key with overlap_seconds: until when the replaced key still works", omit_none=True),
    ] = None


@dataclass(frozen=True)
class Merchant:
    id: str
    name: str
    domain: str | None
    key_hint: Annotated[str, about("the first characters of its key")]
    suspended: bool
    created_at: dt.datetime


@dataclass(frozen=True)
class MerchantList:
    merchants: tuple[Merchant, ...]


@dataclass(frozen=True)
class Suspension:
    """The service's switch, or one cardholder's or merchant's."""

    suspended: bool
    notice: Annotated[str, about("the operator's public text")]
    cardholder: Annotated[str | None, about("the one cardholder concerned", omit_none=True)]
    merchant: Annotated[str | None, about("the one merchant concerned", omit_none=True)]


V = TypeVar("V")
_SLOTS: dict[type, tuple[Slot, ...]] = {}
_PLANS: dict[type, tuple[tuple[str, Callable[[Any], Any], bool], ...]] = {}

# ---- derivation --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Slot:
    """One field of a view, as `wire` and `schema_of` read it."""

    name: str
    kind: Any  # the type with None removed
    optional: bool  # None is a value
    omit_none: bool
    description: str
    schema: dict[str, Any]


def slots(view: type) -> tuple[Slot, ...]:
    found = _SLOTS.get(view)
    if found is None:
        found = _SLOTS[view] = _read_slots(view)
    return found


def _read_slots(view: type) -> tuple[Slot, ...]:
    hints = typing.get_type_hints(view, include_extras=True)
    found = []
    for f in dataclasses.fields(view):
        kind, doc = hints[f.name], About()
        if typing.get_origin(kind) is Annotated:
            kind, doc = typing.get_args(kind)
        optional = False
        if isinstance(kind, types.UnionType):
            others = [arg for arg in typing.get_args(kind) if arg is not type(None)]
            kind, optional = others[0], len(others) < len(typing.get_args(kind))
        found.append(Slot(f.name, kind, optional, doc.omit_none, doc.description, doc.schema))
    return tuple(found)


def _same(value: Any) -> Any:
    return value


def _iso(value: Any) -> Any:
    return value.isoformat()


def _converter(kind: Any) -> Callable[[Any], Any]:
    if kind in (dt.datetime, dt.date):
        return _iso
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return lambda value: value.value
    if typing.get_origin(kind) is tuple:
        item = typing.get_args(kind)[0]
        return lambda values: [wire(v) for v in values] if dataclasses.is_dataclass(item) else list(values)
    return _same


def wire(view: Any) -> dict[str, Any]:
    """The view as its JSON answer."""
    kind = type(view)
    plan = _PLANS.get(kind)
    if plan is None:
        plan = _PLANS[kind] = tuple((s.name, _converter(s.kind), s.omit_none) for s in slots(kind))
    answer: dict[str, Any] = {}
    for name, convert, omit_none in plan:
        value = getattr(view, name)
        if value is None:
            if not omit_none:
                answer[name] = None
        else:
            answer[name] = convert(value)
    return answer


def _parser(kind: Any) -> Callable[[Any], Any]:
    if kind is dt.datetime:
        return dt.datetime.fromisoformat
    if kind is dt.date:
        return dt.date.fromisoformat
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return typing.cast(Callable[[Any], Any], kind)
    return _same


def from_wire(view: type[V], answer: dict[str, Any]) -> V:
    """The view back from its JSON answer (an answer stored for an Idempotency-Key)."""
    values = {}
    for s in slots(view):
        value = answer.get(s.name)
        values[s.name] = None if value is None else _parser(s.kind)(value)
    return view(**values)
