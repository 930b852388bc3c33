"""agi_codec fed with the real Asterisk 22.10.1 transcripts, byte for byte and split at every point."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from idtronic_tel.ivr.agi_codec import (
    MAX_LINE,
    AgiEnv,
    AgiProtocolError,
    DeadChannel,
    EnvParser,
    HangupNotice,
    InvalidCommand,
    LineSplitter,
    Provisional,
    Quoted,
    Reply,
    ReplyEvent,
    ReplyParser,
    Unexpected,
    UsageError,
    encode_command,
    encode_env,
)
from idtronic_tel.ivr.agi_grammar import match_command, tokenize
from tests import transcripts

# One FastAGI session per file (the others interleave several sessions without connection markers).
SESSIONS = [
    "agi-full-enroll-fr.txt",
    "agi-getdata-variants.txt",
    "agi-hangup-during-get-data.txt",
    "agi-hangup-during-stream-file.txt",
    "agi-hangup-while-idle.txt",
    "agi-invalid-commands.txt",
    "agi-originate-variables.txt",
    "agi-pipelined-commands.txt",
    "agi-slow-env-reader.txt",
    "agi-stream-file-dtmf.txt",
    "agi-close-after-env.txt",
    "agi-success.txt",
]


def parse_stream(chunks: list[bytes]) -> tuple[AgiEnv | None, list[ReplyEvent]]:
    """What the server does with Asterisk's bytes: split lines, env block, then replies."""
    splitter, env_parser, replies = LineSplitter(), EnvParser(), ReplyParser()
    env: AgiEnv | None = None
    events: list[ReplyEvent] = []
    for chunk in chunks:
        for line in splitter.feed(chunk):
            if env is None:
                env = env_parser.feed_line(line)
                continue
            event = replies.feed_line(line)
            if event is not None:
                events.append(event)
    assert splitter.pending == 0
    return env, events


def asterisk_bytes(name: str) -> bytes:
    return transcripts.stream(name, "in")


def render(event: ReplyEvent) -> str:
    """An event back to the text of its (first) line, to compare with the recording."""
    if isinstance(event, Reply):
        text = f"200 result={event.result}"
        if event.data is not None:
            text += f" ({event.data})"
        if event.endpos is not None:
            text += f" endpos={event.endpos}"
        return text
    return {
        HangupNotice: "HANGUP",
        InvalidCommand: "510 Invalid or unknown command",
        DeadChannel: "511 Command Not Permitted on a dead channel or intercept routine",
        UsageError: "520",
    }[type(event)]


def expected_replies(name: str) -> list[str]:
    """The recorded reply lines after the env block, with each 520 block folded to "520"."""
    lines = [ln.data.decode()[:-1] for ln in transcripts.load(name) if ln.direction == "in"]
    lines = lines[lines.index("") + 1 :]
    out: list[str] = []
    in_block = False
    for line in lines:
        if in_block:
            if line.startswith("520 "):
                out.append("520")
                in_block = False
        elif line.startswith("520-"):
            in_block = True
        else:
            out.append(line)
    return out


@pytest.mark.parametrize("name", SESSIONS)
def test_transcript_replies_round_trip(name: str) -> None:
    env, events = parse_stream([asterisk_bytes(name)])
    assert env is not None
    assert not [e for e in events if isinstance(e, Unexpected)]
    assert [render(e) for e in events] == expected_replies(name)


@pytest.mark.parametrize("name", SESSIONS)
def test_transcript_split_at_every_point(name: str) -> None:
    data = asterisk_bytes(name)
    whole = parse_stream([data])
    for i in range(len(data) + 1):
        assert parse_stream([data[:i], data[i:]]) == whole


# Hypothesis and pytest's parametrize do not mix under pytest-twisted: the file is drawn instead.
@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(SESSIONS), cuts=st.lists(st.integers(min_value=0, max_value=5000), max_size=40))
def test_transcript_split_anywhere(name: str, cuts: list[int]) -> None:
    data = asterisk_bytes(name)
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    assert parse_stream(chunks) == parse_stream([data])


def test_full_enroll_env() -> None:
    env, _ = parse_stream([asterisk_bytes("agi-full-enroll-fr.txt")])
    assert env is not None
    assert env.get("agi_network_script") == "enroll?lang=fr"
    assert env.script == "enroll"  # routed without the query string
    assert env.query == "lang=fr"
    assert env.get("agi_request") == "agi://127.0.0.1:4573/enroll?lang=fr"
    assert env.get("agi_language") == "fr"
    assert env.get("agi_accountcode") == ""  # 'agi_accountcode: \n'
    assert env.args == ("full-enroll-fr", "")  # the empty agi_arg_2 is kept
    assert env.arg(2) == "" and env.arg(3) == ""


def test_env_encoder_reproduces_asterisk_order() -> None:
    data = asterisk_bytes("agi-full-enroll-fr.txt")
    env, _ = parse_stream([data])
    assert env is not None
    block = data[: data.index(b"\n\n") + 2]
    assert encode_env(dict(env.values)) == block
    # Any insertion order gives Asterisk's order back.
    assert encode_env(dict(reversed(list(env.values.items())))) == block


def test_specific_replies() -> None:
    _, events = parse_stream([asterisk_bytes("agi-getdata-variants.txt")])
    replies = [e for e in events if isinstance(e, Reply)]
    assert (replies[1].result, replies[1].timed_out) == ("42", False)
    assert (replies[3].result, replies[3].timed_out) == ("12", True)  # `200 result=12 (timeout)`
    assert (replies[4].result, replies[4].timed_out) == ("", True)  # `200 result= (timeout)`

    _, events = parse_stream([asterisk_bytes("agi-stream-file-dtmf.txt")])
    endpos = [(e.result, e.endpos) for e in events if isinstance(e, Reply)]
    assert endpos[1:] == [("55", 17920), ("35", 43520), ("0", 3520), ("0", 233760)]

    _, events = parse_stream([asterisk_bytes("agi-originate-variables.txt")])
    # `Example return code: 200 result=1 (...)` inside the 520 block is usage text, not a reply.
    usage = [e for e in events if isinstance(e, UsageError)]
    assert len(usage) == 1 and any("200 result=1" in line for line in usage[0].usage)
    replies = [e for e in events if isinstance(e, Reply)]
    assert replies[-2].data == "0600000000 Enroll en 1795710559.14"


def test_hangup_notice_after_reply_and_while_idle() -> None:
    _, events = parse_stream([asterisk_bytes("agi-hangup-during-stream-file.txt")])
    assert isinstance(events[1], Reply) and (events[1].result, events[1].endpos) == ("-1", 16160)
    assert isinstance(events[2], HangupNotice)
    assert [type(e) for e in events[3:]] == [DeadChannel, DeadChannel, Reply]
    _, events = parse_stream([asterisk_bytes("agi-hangup-while-idle.txt")])
    assert [type(e) for e in events] == [Reply, HangupNotice, DeadChannel]


def test_reply_forms_not_recorded() -> None:
    parser = ReplyParser()
    assert parser.feed_line(b"100 result=0 Trying...") == Provisional()
    assert parser.feed_line(b"520 Invalid command syntax.  Proper usage not available.") == UsageError(())
    assert parser.feed_line(b"200 result=1 (dtmf) endpos=1234") == Reply("1", "dtmf", 1234)
    assert parser.feed_line(b"200 result=1 (a (nested) value)") == Reply("1", "a (nested) value")
    assert parser.feed_line(b"200 result=1 ()") == Reply("1", "")
    assert isinstance(parser.feed_line(b"200 oops"), Unexpected)
    assert isinstance(parser.feed_line(b"HANGUP "), Unexpected)
    assert isinstance(parser.feed_line(b"garbage"), Unexpected)
    assert isinstance(parser.feed_line(b"200 result=0\r"), Unexpected)  # Asterisk never sends CR


def test_reply_repr_hides_digits() -> None:
    reply = Reply("12345678")
    assert "12345678" not in repr(reply)
    assert isinstance(ReplyParser().feed_line(b"200 result=12345678 garbage garbage"), Unexpected)
    assert "12345678" not in repr(Unexpected(length=40))


def test_usage_block_is_bounded() -> None:
    parser = ReplyParser()
    assert parser.feed_line(b"520-Invalid command syntax.  Proper usage follows:") is None
    for _ in range(1000):
        assert parser.feed_line(b"HANGUP") is None  # usage text, whatever it says
    event = parser.feed_line(b"520 End of proper usage.")
    assert isinstance(event, UsageError) and len(event.usage) + event.dropped_lines == 1000
    assert len(event.usage) <= 64


def test_line_length_is_bounded() -> None:
    splitter = LineSplitter()
    with pytest.raises(AgiProtocolError):
        splitter.feed(b"x" * (MAX_LINE + 1))
    splitter = LineSplitter()
    with pytest.raises(AgiProtocolError):
        splitter.feed(b"y" * (MAX_LINE + 1) + b"\n")
    assert LineSplitter().feed(b"z" * MAX_LINE + b"\n") == [b"z" * MAX_LINE]


def test_env_parser_rejects_garbage() -> None:
    with pytest.raises(AgiProtocolError):
        EnvParser().feed_line(b"200 result=0")
    with pytest.raises(AgiProtocolError):
        EnvParser().feed_line(b"not an env line")
    parser = EnvParser()
    with pytest.raises(AgiProtocolError):
        for _ in range(1000):
            parser.feed_line(b"agi_x: y")


# -- encoder -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SESSIONS)
def test_encoder_matches_recorded_commands(name: str) -> None:
    for line in [ln.data for ln in transcripts.load(name) if ln.direction == "out"]:
        check_encoder(line)


def check_encoder(line: bytes) -> None:
    text = line.decode()[:-1]
    if "\r" in text:
        # We never write CRLF: Asterisk keeps the \r in the last argument (ANSWER\r -> 510).
        tokens = tokenize(text)
        with pytest.raises(ValueError):
            encode_command(tokens[0].text.strip("\r") or "X", *[t.text for t in tokens[1:]] or ["\r"])
        return
    tokens = tokenize(text)
    if not tokens:
        with pytest.raises(ValueError):
            encode_command("")
        return
    matched = match_command([t.text for t in tokens])
    n = len(matched[0].split()) if matched else 2  # `FOO BAR`
    name = " ".join(t.text for t in tokens[:n])
    args = [Quoted(t.text) if t.quoted else t.text for t in tokens[n:]]
    assert encode_command(name, *args) == line


def test_encoder_quoting() -> None:
    assert encode_command("SAY DIGITS", "1234", "") == b'SAY DIGITS 1234 ""\n'
    assert (
        encode_command("SET VARIABLE", "GREETING", "hello world") == b'SET VARIABLE GREETING "hello world"\n'
    )
    assert encode_command("VERBOSE", 'say "hi" \\o/', "1") == b'VERBOSE "say \\"hi\\" \\\\o/" 1\n'
    assert encode_command("STREAM FILE", "beep", Quoted("#")) == b'STREAM FILE beep "#"\n'
    for bad in ("a\r", "a\nb", "\0"):
        with pytest.raises(ValueError):
            encode_command("NOOP", bad)
    with pytest.raises(ValueError):
        encode_command("NOOP", "x" * 3000)
    with pytest.raises(ValueError):
        encode_command("GET DATA\r")


def test_match_command() -> None:
    assert match_command(["get", "variable", "CHANNEL"]) == ("GET VARIABLE", ["CHANNEL"])
    assert match_command(["GET", "FULL", "VARIABLE", "${X}"]) == ("GET FULL VARIABLE", ["${X}"])
    assert match_command(["ANSWER\r"]) is None
    assert match_command([]) is None


_ARG_TEXT = st.text(st.characters(blacklist_characters="\r\n\0", blacklist_categories=["Cs"]), max_size=30)


@settings(max_examples=300)
@given(args=st.lists(_ARG_TEXT, max_size=6))
def test_encoder_round_trips_through_asterisk_tokenizer(args: list[str]) -> None:
    data = encode_command("SET VARIABLE", *args)
    assert data.endswith(b"\n") and b"\r" not in data
    words = [t.text for t in tokenize(data.decode()[:-1])]
    assert words == ["SET", "VARIABLE", *args]


@settings(max_examples=500)
@given(lines=st.lists(st.binary(max_size=120), max_size=20))
def test_parsers_never_crash(lines: list[bytes]) -> None:
    parser = ReplyParser()
    for line in lines:
        line = line.replace(b"\n", b"")
        parser.feed_line(line)
    env = EnvParser()
    for line in lines:
        try:
            env.feed_line(line.replace(b"\n", b""))
        except AgiProtocolError:
            break


@settings(max_examples=200)
@given(data=st.binary(max_size=400), cut=st.integers(min_value=0, max_value=400))
def test_splitter_equivalent_to_split(data: bytes, cut: int) -> None:
    a, b = LineSplitter(), LineSplitter()
    assert a.feed(data) == b.feed(data[:cut]) + b.feed(data[cut:]) == data.split(b"\n")[:-1]
