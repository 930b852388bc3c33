"""Asterisk's side of the FastAGI command grammar (res_agi.c), without I/O: how it splits a command line
and which command it recognises. Used by the Asterisk emulator, and by the tests to check our encoder."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Token:
    text: str
    quoted: bool


def tokenize(line: str) -> list[Token]:
    """Split a command line as res_agi.c's parse_args does: spaces and tabs separate, double quotes
    group (`""` is an empty argument), a backslash makes the next character literal. A `\\r` is an
    ordinary character (so `ANSWER\\r` is not `ANSWER`)."""
    tokens: list[Token] = []
    current: list[str] = []
    quoted = escaped = False
    in_word = was_quoted = False
    for char in line:
        if escaped:
            current.append(char)
            escaped = False
            in_word = True
        elif char == "\\":
            escaped = True
            in_word = True
        elif char == '"':
            quoted = not quoted
            in_word = was_quoted = True
        elif char in " \t" and not quoted:
            if in_word:
                tokens.append(Token("".join(current), was_quoted))
            current, in_word, was_quoted = [], False, False
        else:
            current.append(char)
            in_word = True
    if in_word:
        tokens.append(Token("".join(current), was_quoted))
    return tokens


# Commands known to Asterisk 22 that the emulator answers (res_agi.c command table, word by word).
KNOWN_COMMANDS: tuple[tuple[str, ...], ...] = (
    ("ANSWER",),
    ("CHANNEL", "STATUS"),
    ("EXEC",),
    ("GET", "DATA"),
    ("GET", "FULL", "VARIABLE"),
    ("GET", "VARIABLE"),
    ("HANGUP",),
    ("NOOP",),
    ("SAY", "DIGITS"),
    ("SET", "VARIABLE"),
    ("STREAM", "FILE"),
    ("VERBOSE",),
    ("WAIT", "FOR", "DIGIT"),
)


def match_command(words: Sequence[str]) -> tuple[str, list[str]] | None:
    """Longest case-insensitive match of the leading words: ("GET DATA", remaining arguments)."""
    best: tuple[str, ...] | None = None
    for known in KNOWN_COMMANDS:
        n = len(known)
        matches = len(words) >= n and all(w.upper() == k for w, k in zip(words, known, strict=False))
        if matches and (best is None or n > len(best)):
            best = known
    if best is None:
        return None
    return " ".join(best), list(words[len(best) :])
