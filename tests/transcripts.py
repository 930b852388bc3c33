"""Load the recorded Asterisk transcripts (tests/recorded/*.txt) as raw bytes.

Line formats (docs/protocols/AMI.md, docs/protocols/AGI.md):
    ``   0.003 AST> 'Response: Success\\r\\n'``     repr of the raw line (current format)
    ``   0.006 >AST Action: Login``                   older format: no repr, line ending stripped
    ``   1.035 AST>[2] '...'``                        a 2nd/3rd connection in the same file
``---`` annotations, ``#`` comments and any other text (summaries) are skipped.

``direction`` is seen from our side of the wire: ``"in"`` = sent by Asterisk (``AST>``), ``"out"`` = sent
to Asterisk (``>AST``). That holds for AMI (we are the client) and FastAGI (we are the server) alike.

    from tests.transcripts import load, stream
    lines = load("ami-login-md5-ok.txt")
    asterisk_bytes = stream("ami-login-md5-ok.txt", "in")
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

Direction = Literal["in", "out"]

# Recorded byte for byte from Asterisk 22.10.1 and the node-smpp SMSC (tests/recorded/README.md).
TRANSCRIPTS_DIR = Path(__file__).resolve().parent / "recorded"

_LINE = re.compile(r"^\s*(?P<t>\d+\.\d+) (?P<dir>AST>|>AST)(?:\[(?P<conn>\d+)\])? ?(?P<rest>.*)$", re.DOTALL)


@dataclass(frozen=True)
class Line:
    t: float  # seconds, as recorded
    direction: Direction  # "in" = from Asterisk, "out" = to Asterisk
    conn: int  # 1 for the first connection of the file, 2 for "[2]", ...
    data: bytes  # the raw bytes on the wire, line ending included


def path(name: str) -> Path:
    return TRANSCRIPTS_DIR / name


def names(prefix: str = "") -> list[str]:
    """Transcript file names starting with `prefix`, sorted."""
    return sorted(p.name for p in TRANSCRIPTS_DIR.glob(f"{prefix}*.txt"))


@cache
def load(name: str, plain_eol: bytes = b"\r\n") -> tuple[Line, ...]:
    """Parse one transcript. `plain_eol` is appended to lines of the older plain-text format (AMI: CRLF)."""
    out: list[Line] = []
    for raw in path(name).read_text(encoding="utf-8").split("\n"):
        m = _LINE.match(raw)
        if m is None:
            continue  # comments, `run N:` summaries, blank lines
        rest = m["rest"]
        if len(rest) >= 2 and rest[0] in "'\"" and rest[-1] == rest[0]:
            data = ast.literal_eval(rest).encode("utf-8")
        else:
            data = rest.encode("utf-8") + plain_eol
        out.append(
            Line(
                t=float(m["t"]),
                direction="in" if m["dir"] == "AST>" else "out",
                conn=int(m["conn"] or 1),
                data=data,
            )
        )
    return tuple(out)


def stream(name: str, direction: Direction, conn: int = 1) -> bytes:
    """All bytes sent in one direction on one connection, concatenated."""
    return b"".join(ln.data for ln in load(name) if ln.direction == direction and ln.conn == conn)


def connections(name: str) -> list[int]:
    return sorted({ln.conn for ln in load(name)})
