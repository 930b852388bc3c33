"""The fields every actor's pages share: identity and the first 8 card digits (the enrollment page, the
personal section and the operator's console ask for them with the same rules: docs/rules.md §1), the
identification number and the code received by SMS."""

from __future__ import annotations

from typing import Any

from .web import Html, field

NAMES = ("last_name", "first_name", "birth_date", "mobile")
_DATE_HINT = "Au format JJ/MM/AAAA, par exemple 12/04/1985."
_FIELDS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("last_name", "Nom", {"autocomplete": "family-name", "maxlength": "100"}),
    ("first_name", "Prénom", {"autocomplete": "given-name", "maxlength": "100"}),
    (
        "birth_date",
        "Date de naissance",
        {"autocomplete": "bday", "inputmode": "numeric", "placeholder": "JJ/MM/AAAA", "maxlength": "10"},
    ),
    (
        "mobile",
        "Téléphone mobile",
        {"autocomplete": "tel", "type": "tel", "placeholder": "06 11 22 33 44", "maxlength": "30"},
    ),
)


def identity_fields(
    values: dict[str, str],
    errors: dict[str, str],
    form: str,
    required: bool = True,
    mobile_hint: str | None = None,
) -> list[Html]:
    hints = {"birth_date": _DATE_HINT, "mobile": mobile_hint}
    return [
        field(
            label,
            name,
            values.get(name, ""),
            errors.get(name),
            form=form,
            hint=hints.get(name),
            required=required,
            **attrs,
        )
        for name, label, attrs in _FIELDS
    ]


def card_first8_field(error: str | None, form: str, hint: str | None) -> Html:
    """Always empty: the digits are never written back into a page."""
    return field(
        "Les 8 premiers chiffres de la carte",
        "card_first8",
        "",
        error,
        form=form,
        hint=hint,
        inputmode="numeric",
        pattern="[0-9 ]{8,11}",
        maxlength="11",
        autocomplete="off",
        required=True,
    )


def identifier_field(value: str, error: str | None, form: str, hint: str | None = None) -> Html:
    return field(
        "Numéro d'identification",
        "identifier",
        value,
        error,
        form=form,
        hint=hint,
        inputmode="numeric",
        maxlength="13",
        autocomplete="off",
        required=True,
    )


def code_field(error: str | None, form: str) -> Html:
    """Always empty (a code is never written back); the browser may fill it from the SMS."""
    return field(
        "Code reçu par SMS",
        "token",
        "",
        error,
        form=form,
        inputmode="numeric",
        maxlength="6",
        autocomplete="one-time-code",
        pattern="[0-9]{6}",
        required=True,
    )
