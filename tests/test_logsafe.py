"""logsafe.loggable: a peer's value is printable, unambiguous and bounded in any log line."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from idtronic_tel.logsafe import MAX_CHARS, loggable


def test_control_and_invisible_characters_are_escaped() -> None:
    assert loggable("PJSIP/a\x1b[2J\rb\nc\td\x07") == "PJSIP/a\\x1b[2J\\rb\\nc\\td\\x07"
    assert loggable("\u202eevil\u2028x\x7f\x85") == "\\u202eevil\\u2028x\\x7f\\x85"
    assert loggable("a\\x1b") == "a\\\\x1b"  # a typed backslash cannot pass for an escape
    assert loggable("Clément 0611223344;1") == "Clément 0611223344;1"
    assert loggable(b"\xff\x1b") == "\ufffd\\x1b"
    assert loggable(None) == "None"


def test_long_values_are_cut_with_their_length() -> None:
    assert loggable("A" * 8000) == "A" * MAX_CHARS + f"…[{8000 - MAX_CHARS} more of 8000 chars]"
    assert loggable("\x1b" * 100, limit=10) == "\\x1b" * 2 + "…[98 more of 100 chars]"
    assert loggable("A" * MAX_CHARS) == "A" * MAX_CHARS


@given(st.text(), st.integers(min_value=1, max_value=300))
def test_always_printable_and_bounded(text: str, limit: int) -> None:
    out = loggable(text, limit)
    assert out.isprintable()
    head = out.split("…[", 1)[0]
    assert len(head) <= limit
