"""Enrollment (docs/rules.md §1): identity, mobile and the first 8 card digits in; an identification number
out; a callback queued. The last 8 digits only ever arrive by phone (see callbacks.py)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from . import audit, budget, views
from .cards import new_identifier
from .errors import Conflict, InvalidInput, NotFound
from .models import CallbackRequest, Cardholder
from .phones import InvalidMobile, normalise_mobile
from .ports import CallKind
from .rules import Rules
from .states import CallbackState, CardholderStatus

CHANNELS = ("web", "phone", "fax")


def validate_identity(rules: Rules, fields: dict[str, Any], partial: bool = False) -> dict[str, Any]:
    """Checks and normalises last_name, first_name, birth_date, mobile; raises InvalidInput."""
    problems: dict[str, str] = {}
    clean: dict[str, Any] = {}
    for name in ("last_name", "first_name"):
        if name in fields:
            value = fields[name].strip()
            if not 1 <= len(value) <= 100 or any(ord(c) < 32 for c in value):
                problems[name] = "1 to 100 printable characters"
            clean[name] = value
        elif not partial:
            problems[name] = "required"
    if "birth_date" in fields:
        try:
            born = dt.date.fromisoformat(fields["birth_date"])
        except ValueError:
            problems["birth_date"] = "a date YYYY-MM-DD"
        else:
            today = rules.now().date()
            if not dt.date(1900, 1, 1) <= born <= today.replace(year=today.year - 16):
                problems["birth_date"] = "between 1900-01-01 and 16 years ago"
            clean["birth_date"] = born
    elif not partial:
        problems["birth_date"] = "required"
    if "mobile" in fields:
        try:
            clean["mobile"] = normalise_mobile(fields["mobile"], rules.settings.enrollment.default_region)
        except InvalidMobile as exc:
            problems["mobile"] = str(exc)
    elif not partial:
        problems["mobile"] = "required"
    if problems:
        raise InvalidInput(problems)
    return clean


def enroll(s: Session, rules: Rules, fields: dict[str, Any], channel: str, actor: str) -> views.Enrollment:
    problems: dict[str, str] = {}
    try:
        identity = validate_identity(rules, fields)
    except InvalidInput as exc:
        problems.update(exc.extra["fields"])
    first8 = fields.get("card_first8", "")
    if not (len(first8) == 8 and first8.isascii() and first8.isdigit()):
        problems["card_first8"] = "exactly 8 digits"
    elif not rules.prefixes.accepts(first8):
        problems["card_first8"] = "this card is not accepted by the service"
    if channel not in CHANNELS:
        problems["channel"] = "one of web, phone, fax"
    if problems:
        raise InvalidInput(problems)
    now = rules.now()
    for _ in range(5):  # identifiers are random: retry the rare collision
        identifier = new_identifier()
        if s.scalar(select(Cardholder.id).where(Cardholder.identifier == identifier)) is None:
            break
    else:
        raise Conflict("could not draw a free identification number")
    holder = Cardholder(
        identifier=identifier,
        channel=channel,
        status=CardholderStatus.AWAITING_CALLBACK,
        first8_enc=rules.vault.encrypt("card-first8", first8),
        created_at=now,
        updated_at=now,
        **identity,
    )
    s.add(holder)
    try:
        s.flush()
    except IntegrityError as exc:
        raise Conflict("identification number collision, try again") from exc
    schedule_call(s, rules, holder, CallKind.ENROLL, holder.mobile, rules.settings.callback.first_call_delay)
    audit.record(s, rules, actor, "enrollment.create", f"cardholder:{identifier}", channel=channel)
    return status(s, rules, identifier)


def schedule_call(
    s: Session, rules: Rules, holder: Cardholder, kind: CallKind, mobile: str, delay: float
) -> CallbackRequest:
    request = CallbackRequest(
        cardholder_id=holder.id,
        kind=kind,
        mobile=mobile,
        state=CallbackState.WAITING,
        next_call_at=rules.next_call_time(rules.now() + dt.timedelta(seconds=delay)),
        created_at=rules.now(),
    )
    s.add(request)
    return request


def _holder(s: Session, identifier: str) -> Cardholder:
    holder = s.scalar(select(Cardholder).where(Cardholder.identifier == identifier))
    if holder is None:
        raise NotFound("no enrollment with this identification number")
    return holder


def status(s: Session, rules: Rules, identifier: str) -> views.Enrollment:
    holder = _holder(s, identifier)
    request = s.scalar(
        select(CallbackRequest)
        .where(CallbackRequest.cardholder_id == holder.id, CallbackRequest.kind == CallKind.ENROLL)
        .order_by(CallbackRequest.id.desc())
        .limit(1)
    )
    next_call = None
    enrolling = (CardholderStatus.AWAITING_CALLBACK, CardholderStatus.CALLING)
    if holder.status in enrolling and request and request.state == CallbackState.WAITING:
        next_call = request.next_call_at
    return views.Enrollment(identifier, CardholderStatus(holder.status), next_call)


def request_callback(s: Session, rules: Rules, identifier: str) -> views.Enrollment:
    """A new callback after a failed enrollment; refused while locked (the failures already counted)."""
    holder = _holder(s, identifier)
    if holder.status != CardholderStatus.FAILED:
        raise Conflict("a new callback can only be requested after a failed enrollment", status=holder.status)
    if budget.is_locked(holder, rules.now()):
        raise Conflict("this enrollment is locked; contact your bank", status="locked")
    holder.status = CardholderStatus.AWAITING_CALLBACK
    holder.updated_at = rules.now()
    schedule_call(s, rules, holder, CallKind.ENROLL, holder.mobile, rules.settings.callback.first_call_delay)
    audit.record(s, rules, "cardholder", "enrollment.callback", f"cardholder:{identifier}")
    return status(s, rules, identifier)


def lock(s: Session, rules: Rules, identifier: str, locked: bool, reason: str) -> views.Lock:
    budget.set_lock(rules, _holder(s, identifier), locked, reason)
    audit.record(
        s, rules, "operator", "cardholder.lock" if locked else "cardholder.unlock", f"cardholder:{identifier}"
    )
    return views.Lock(identifier, locked)
