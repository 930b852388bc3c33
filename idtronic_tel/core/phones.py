"""Mobile numbers: parsed and normalised to E.164 with `phonenumbers`; only mobiles are accepted."""

from __future__ import annotations

import phonenumbers
from phonenumbers import PhoneNumberType

_MOBILE_TYPES = {PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE}


class InvalidMobile(ValueError):
    pass


def normalise_mobile(raw: str, region: str) -> str:
    """E.164 form of a mobile number, or InvalidMobile with a message fit for the API."""
    try:
        number = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException as exc:
        raise InvalidMobile("not a phone number") from exc
    if not phonenumbers.is_valid_number(number):
        raise InvalidMobile("not a valid phone number")
    if phonenumbers.number_type(number) not in _MOBILE_TYPES:
        raise InvalidMobile("not a mobile number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def dial_forms(e164: str) -> dict[str, str]:
    """The placeholders of ami.callback_channel: `{e164}` +33611223344, `{digits}` 33611223344,
    `{national}` 0611223344."""
    digits = "".join(c for c in e164 if c.isdigit())
    try:
        number = phonenumbers.parse("+" + digits, None)
        formatted = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL)
        national = "".join(c for c in formatted if c.isdigit())
    except phonenumbers.NumberParseException:
        national = digits
    return {"e164": "+" + digits, "digits": digits, "national": national}
