"""Text coding and splitting, addresses, validity period."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from idtronic_tel.smpp import messages

TOKEN_SMS = (
    "id-tronic : code 483920 pour payer 49,90 EUR chez Boutique Exemple. Valable 5 min. "
    "Ne le communiquez jamais."
)


def test_gsm7_single_part() -> None:
    (part,) = messages.encode_text(TOKEN_SMS, reference=1)
    assert part.data_coding == messages.DATA_CODING_GSM7
    assert part.esm_class == 0
    assert part.short_message == TOKEN_SMS.encode("ascii")


def test_gsm7_accents_and_extension_characters() -> None:
    (part,) = messages.encode_text("é à ù €", reference=1)
    assert part.data_coding == messages.DATA_CODING_GSM7
    assert part.short_message == bytes([0x05, 0x20, 0x7F, 0x20, 0x06, 0x20, 0x1B, 0x65])


def test_ucs2_when_gsm_cannot() -> None:
    (part,) = messages.encode_text("code 123456 ç ê", reference=1)
    assert part.data_coding == messages.DATA_CODING_UCS2
    assert part.short_message == "code 123456 ç ê".encode("utf-16-be")


def test_160_gsm_characters_fit_one_part_161_need_two() -> None:
    assert len(messages.encode_text("a" * 160, 1)) == 1
    parts = messages.encode_text("a" * 161, 7)
    assert [p.short_message[:6] for p in parts] == [bytes([5, 0, 3, 7, 2, 1]), bytes([5, 0, 3, 7, 2, 2])]
    assert all(p.esm_class == 0x40 and p.data_coding == 0 for p in parts)
    assert b"".join(p.short_message[6:] for p in parts) == b"a" * 161
    assert len(parts[0].short_message) == 6 + 153


def test_long_ucs2_parts_are_134_octets() -> None:
    text = "ç" * 71
    parts = messages.encode_text(text, 300)
    assert len(parts) == 2
    assert parts[0].short_message[:6] == bytes([5, 0, 3, 300 & 0xFF, 2, 1])
    assert len(parts[0].short_message) == 6 + 134
    assert b"".join(p.short_message[6:] for p in parts).decode("utf-16-be") == text


def test_escape_pair_never_split() -> None:
    text = "a" * 152 + "€" + "b" * 10  # the euro's escape would be the 153rd octet
    parts = messages.encode_text(text, 1)
    first = parts[0].short_message[6:]
    assert first == b"a" * 152
    assert parts[1].short_message[6:8] == b"\x1be"


def test_surrogate_pair_never_split() -> None:
    text = "x" * 66 + "😀" + "y" * 10
    parts = messages.encode_text(text, 1)
    assert b"".join(p.short_message[6:] for p in parts).decode("utf-16-be") == text
    for part in parts:
        part.short_message[6:].decode("utf-16-be")  # each part decodes on its own


def test_too_long() -> None:
    with pytest.raises(ValueError):
        messages.encode_text("a" * 153 * 256, 1)


def test_destination() -> None:
    assert messages.destination_address("+33611223344") == "33611223344"
    with pytest.raises(ValueError):
        messages.destination_address("+33 6 11")


def test_relative_validity() -> None:
    now = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    assert messages.relative_validity(now, now + timedelta(minutes=5)) == "000000000500000R"
    assert messages.relative_validity(now, now + timedelta(seconds=299.9)) == "000000000459000R"
    assert messages.relative_validity(now, now + timedelta(hours=25, seconds=3)) == "000001010003000R"
    assert messages.relative_validity(now, now + timedelta(seconds=0.9)) is None
    assert messages.relative_validity(now, now - timedelta(seconds=1)) is None
