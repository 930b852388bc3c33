"""Values a peer chose (AGI and AMI fields: channel names, caller ids, script names, arguments, messages)
made safe for a log line, in every log format.

The text observer writes characters as they are: an ESC rewrites the operator's terminal, a CR or LF
forges a log line. JSON lines escape them, but neither format bounds a value's length (an AGI argument
may be 8 KiB). So every such value goes through `loggable` before it reaches a log call: control and
invisible characters become Python-style escapes (a backslash too, so an escape cannot be faked), and
the result is cut after MAX_CHARS characters with the original length stated.
"""

from __future__ import annotations

MAX_CHARS = 120
_SHORT = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    if char in _SHORT:
        return _SHORT[char]
    if char.isprintable():
        return char
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def loggable(value: object, limit: int = MAX_CHARS) -> str:
    """`value` as printable text of at most about `limit` characters (plus the note of what was cut)."""
    if isinstance(value, bytes | bytearray):
        text = bytes(value).decode("utf-8", errors="replace")
    else:
        text = str(value)
    out: list[str] = []
    size = 0
    for index, char in enumerate(text):
        piece = _escape(char)
        if size + len(piece) > limit:
            return "".join(out) + f"…[{len(text) - index} more of {len(text)} chars]"
        out.append(piece)
        size += len(piece)
    return "".join(out)
