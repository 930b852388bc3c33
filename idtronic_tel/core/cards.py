"""Card number rules: Luhn check, accepted IIN prefixes, identification numbers."""

from __future__ import annotations

from collections.abc import Iterable

from .crypto import random_digits


def luhn_valid(number: str) -> bool:
    if not (number.isascii() and number.isdigit()):  # str.isdigit() takes Arabic-Indic digits too
        return False
    total = 0
    for index, char in enumerate(reversed(number)):
        digit = int(char)
        if index % 2 == 1:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0


def luhn_check_digit(partial: str) -> str:
    """The digit that makes `partial + digit` pass Luhn."""
    for candidate in "0123456789":
        if luhn_valid(partial + candidate):
            return candidate
    raise AssertionError("unreachable: one digit always completes a Luhn number")


class PrefixList:
    """Accepted IIN ranges from configuration: "4", "51-55", "2221-2720"."""

    def __init__(self, specs: Iterable[str]) -> None:
        self._ranges: list[tuple[str, str]] = []
        for spec in specs:
            low, _, high = spec.partition("-")
            self._ranges.append((low, high or low))

    def accepts(self, digits: str) -> bool:
        return any(low <= digits[: len(low)] <= high for low, high in self._ranges)


def new_identifier() -> str:
    """10 digits, the last a Luhn check digit; drawn at random (uniqueness is enforced by the database)."""
    body = random_digits(9)
    return body + luhn_check_digit(body)
