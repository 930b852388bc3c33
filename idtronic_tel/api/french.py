"""What the pages say in French: the core's field problems translated, dates as people write them in
France (JJ/MM/AAAA), times in Paris, amounts in euros, and masks for what a page may only hint at."""

from __future__ import annotations

import datetime as dt
import re
from zoneinfo import ZoneInfo

PARIS = ZoneInfo("Europe/Paris")

# The core's messages (docs/api.md) and what the pages say instead.
_PROBLEMS = {
    "required": "Obligatoire.",
    "1 to 100 printable characters": "De 1 à 100 caractères.",
    "a date YYYY-MM-DD": "Une date au format JJ/MM/AAAA, par exemple 12/04/1985.",
    "between 1900-01-01 and 16 years ago": "Une date entre le 01/01/1900 et il y a 16 ans.",
    "not a phone number": "Ce n'est pas un numéro de téléphone.",
    "not a valid phone number": "Ce numéro de téléphone n'existe pas.",
    "not a mobile number": "Un numéro de mobile est nécessaire : nous vous appellerons dessus.",
    "exactly 8 digits": "Exactement 8 chiffres.",
    "this card is not accepted by the service": "Cette carte n'est pas acceptée par le service.",
    "a 10-digit identification number": "Votre numéro d'identification : 10 chiffres.",
    "6 digits": "Le code reçu par SMS : 6 chiffres.",
}
_CHECK_DIGIT = "Ce numéro ne semble pas correct (le dernier chiffre ne correspond pas) : vérifiez-le."
_DATE = re.compile(r"(\d{1,2})[/.\- ](\d{1,2})[/.\- ](\d{4})")


def problem(text: str) -> str:
    if text.startswith("wrong check digit"):
        return _CHECK_DIGIT
    return _PROBLEMS.get(text, "Vérifiez ce champ.")


def problems(fields: dict[str, str]) -> dict[str, str]:
    return {name: problem(text) for name, text in fields.items()}


def iso_date(text: str) -> str:
    """`12/04/1985` (or 12.04.1985, 12-04-1985) as `1985-04-12`; anything else unchanged (the core then
    names the problem)."""
    found = _DATE.fullmatch(text.strip())
    if found is None:
        return text.strip()
    day, month, year = (int(part) for part in found.groups())
    try:
        return dt.date(year, month, day).isoformat()
    except ValueError:
        return text.strip()


def french_date(iso: str) -> str:
    try:
        return dt.date.fromisoformat(iso).strftime("%d/%m/%Y")
    except ValueError:
        return iso


def paris_time(iso: str | None) -> str:
    """`14:05` (today) or `le 25/11 à 08:00`, in Paris time."""
    if not iso:
        return ""
    when = dt.datetime.fromisoformat(iso).astimezone(PARIS)
    if when.date() == dt.datetime.now(PARIS).date():
        return when.strftime("%H:%M")
    return when.strftime("le %d/%m à %H:%M")


def euros(minor: int, currency: str = "EUR") -> str:
    whole, cents = divmod(minor, 100)
    symbol = "€" if currency == "EUR" else currency
    return f"{whole:,}".replace(",", "\u202f") + f",{cents:02d}\u00a0{symbol}"


def digits_only(text: str) -> str:
    """What a person typed with spaces, dots or dashes between the digits."""
    return re.sub(r"[\s.\-]", "", text)


def masked_identifier(identifier: str) -> str:
    """An identification number partly masked: its last 4 digits."""
    return "••••••" + identifier[-4:] if len(identifier) > 4 else "••••"


def masked_mobile(mobile: str) -> str:
    """A mobile number partly masked: its prefix and its last 2 digits."""
    return mobile[:4] + "•" * max(0, len(mobile) - 6) + mobile[-2:] if len(mobile) > 6 else "••"


def grouped_card(masked: str) -> str:
    """`411111******1111` as `4111 11•• •••• 1111`."""
    shown = masked.replace("*", "•")
    return " ".join(shown[i : i + 4] for i in range(0, len(shown), 4))
