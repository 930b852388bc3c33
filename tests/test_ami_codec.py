"""AMI codec against the byte-exact recordings of Asterisk 22.10.1 (both directions), split anywhere."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from idtronic_tel.ivr.ami_codec import (
    AmiDecoder,
    BadLine,
    Banner,
    FrameTooLarge,
    Item,
    Message,
    encode_action,
    encode_message,
)
from tests import transcripts

# Every AMI recording, named here rather than listed from the folder: collecting the tests reads no file.
# test_every_ami_recording_is_replayed keeps this list and tests/recorded/ in step.
AMI_FILES = [
    "ami-action-before-login.txt",
    "ami-agi-closed.txt",
    "ami-agi-refused.txt",
    "ami-concurrent-10.txt",
    "ami-drop-asterisk-killed.txt",
    "ami-drop-core-restart-gracefully.txt",
    "ami-drop-kicked-session.txt",
    "ami-drop-manager-reload.txt",
    "ami-hangup.txt",
    "ami-login-bad-secret.txt",
    "ami-login-md5-bad-key.txt",
    "ami-login-md5-ok.txt",
    "ami-login-unknown-user.txt",
    "ami-originate-bad-channel-tech.txt",
    "ami-originate-busy.txt",
    "ami-originate-congestion.txt",
    "ami-originate-hangup17.txt",
    "ami-originate-hangup21.txt",
    "ami-originate-no-such-context.txt",
    "ami-originate-no-such-exten.txt",
    "ami-originate-noanswer.txt",
    "ami-originate-success.txt",
    "ami-originate-sync-failure.txt",
    "ami-originate-sync-success.txt",
    "ami-ping-corestatus-unknown-logoff.txt",
    "ami-repeated-headers.txt",
    "ami-success.txt",
    "ami-timeout.txt",
    "agi-backlog5-50.ami.txt",
    "agi-close-after-env.ami.txt",
    "agi-connection-refused.ami.txt",
    "agi-full-enroll-fr.ami.txt",
    "agi-getdata-variants.ami.txt",
    "agi-hangup-during-get-data.ami.txt",
    "agi-hangup-during-stream-file.ami.txt",
    "agi-hangup-while-idle.ami.txt",
    "agi-invalid-commands.ami.txt",
    "agi-originate-variables.ami.txt",
    "agi-pipelined-commands.ami.txt",
    "agi-slow-env-reader.ami.txt",
    "agi-stream-file-dtmf.ami.txt",
]
# Recordings with more than one AMI connection (the daemon reconnected).
MORE_CONNECTIONS = {
    "ami-drop-asterisk-killed.txt": [2],
    "ami-drop-core-restart-gracefully.txt": [2, 3],
    "ami-drop-kicked-session.txt": [2],
}
STREAMS = [(name, conn) for name in AMI_FILES for conn in [1, *MORE_CONNECTIONS.get(name, [])]]


def decode(data: bytes, *, expect_banner: bool, chunks: list[int] | None = None) -> list[Item]:
    dec = AmiDecoder(expect_banner=expect_banner)
    items: list[Item] = []
    if chunks is None:
        items.extend(dec.receive_data(data))
    else:
        pos = 0
        for size in chunks:
            items.extend(dec.receive_data(data[pos : pos + size]))
            pos += size
        items.extend(dec.receive_data(data[pos:]))
    assert dec.buffered == 0, "a recorded stream ends on a message boundary"
    return items


def reference(name: str, direction: transcripts.Direction, conn: int) -> list[Item]:
    """What the recording says, line by line (independent of the byte-stream parser)."""
    out: list[Item] = []
    headers: list[tuple[str, str]] = []
    lines = [ln.data for ln in transcripts.load(name) if ln.direction == direction and ln.conn == conn]
    for i, raw in enumerate(lines):
        assert raw.endswith(b"\r\n")
        text = raw[:-2].decode()
        if direction == "in" and i == 0:
            assert text.startswith("Asterisk Call Manager/")
            out.append(Banner(text))
        elif text == "":
            out.append(Message(tuple(headers)))
            headers = []
        else:
            key, sep, value = text.partition(": ")
            if not sep:  # "Key:" with nothing after the colon
                key, value = text.rstrip(":"), ""
            headers.append((key, value))
    assert not headers
    return out


def test_every_ami_recording_is_replayed() -> None:
    recorded = transcripts.names("ami-") + [n for n in transcripts.names("agi-") if n.endswith(".ami.txt")]
    assert [(name, conn) for name in recorded for conn in transcripts.connections(name)] == STREAMS


@pytest.mark.parametrize(("name", "conn"), STREAMS)
def test_parses_what_asterisk_sent(name: str, conn: int) -> None:
    data = transcripts.stream(name, "in", conn)
    items = decode(data, expect_banner=True)
    assert items == reference(name, "in", conn)
    assert isinstance(items[0], Banner) and items[0].version == "11.0.0"
    assert not any(isinstance(i, BadLine) for i in items)


@pytest.mark.parametrize(("name", "conn"), STREAMS)
def test_one_byte_at_a_time(name: str, conn: int) -> None:
    data = transcripts.stream(name, "in", conn)
    assert decode(data, expect_banner=True, chunks=[1] * len(data)) == decode(data, expect_banner=True)


@pytest.mark.parametrize(
    "name",
    [
        "ami-login-md5-ok.txt",
        "ami-action-before-login.txt",
        "ami-ping-corestatus-unknown-logoff.txt",
        "ami-login-md5-bad-key.txt",
    ],
)
def test_split_at_every_point(name: str) -> None:
    data = transcripts.stream(name, "in")
    whole = decode(data, expect_banner=True)
    for cut in range(len(data) + 1):
        assert decode(data, expect_banner=True, chunks=[cut]) == whole, cut


@pytest.mark.parametrize(("name", "conn"), STREAMS)
def test_encoder_reproduces_both_directions(name: str, conn: int) -> None:
    # What the client sent: parse it as Asterisk would, re-encode: the same bytes.
    sent = transcripts.stream(name, "out", conn)
    messages = [m for m in decode(sent, expect_banner=False) if isinstance(m, Message)]
    assert messages == reference(name, "out", conn)
    assert b"".join(encode_message(m.headers) for m in messages) == sent
    # What Asterisk sent, after the banner line.
    received = transcripts.stream(name, "in", conn)
    _banner, _, rest = received.partition(b"\r\n")
    events = [m for m in decode(received, expect_banner=True) if isinstance(m, Message)]
    encoded = b""
    for m in events:
        if any("\r" in v for _, v in m.headers):
            # Asterisk echoes an AGI command sent with CRLF as 'Command: ANSWER\r\r\n' (agi-invalid-
            # commands.ami.txt): the decoder keeps the stray CR; our encoder refuses to write one.
            with pytest.raises(ValueError):
                encode_message(m.headers)
            encoded += b"".join(f"{k}: {v}\r\n".encode() for k, v in m.headers) + b"\r\n"
        else:
            encoded += encode_message(m.headers)
    assert encoded == rest


def test_encode_action_matches_recorded_originate() -> None:
    recorded = transcripts.stream("ami-originate-success.txt", "out")
    ours = encode_action(
        "Login", "login-1", [("Username", "tester"), ("Secret", "testsecret"), ("Events", "call")]
    )
    ours += encode_action(
        "Originate",
        "orig-success",
        [
            ("Channel", "Local/0611223344@callee-answer"),
            ("Context", "after-answer"),
            ("Exten", "s"),
            ("Priority", "1"),
            ("Timeout", "30000"),
            ("CallerID", '"Enroll" <0600000000>'),
            ("Async", "true"),
            ("ChannelId", "orig-success-chan-1"),
            ("Variable", "CALLEE_HOLD=2"),
        ],
    )
    ours += encode_action("Logoff", "logoff-1")
    assert ours == recorded


def test_repeated_headers_are_kept_in_order() -> None:
    items = decode(transcripts.stream("ami-repeated-headers.txt", "in"), expect_banner=True)
    messages = [m for m in items if isinstance(m, Message)]
    status = next(m for m in messages if m.event == "Status" and m.get_all("Variable"))
    assert status.get_all("Variable") == ["IDTRONIC_CALLBACK=abc123", "VAR_A=1", "VAR_B=2", "CALLEE_HOLD=3"]
    assert status.headers[-1][0] == "ActionID"  # ActionID last in Status events
    orig = next(m for m in messages if m.event == "OriginateResponse")
    assert orig.get("ChanVariable(Local/0611223344@callee-answer-00000000;1)") == "IDTRONIC_CALLBACK=abc123"
    command = next(m for m in messages if len(m.get_all("Output")) > 2)
    assert len(command.get_all("Output")) == sum(1 for k, _ in command.headers if k == "Output")
    sent = [
        m
        for m in decode(transcripts.stream("ami-repeated-headers.txt", "out"), expect_banner=False)
        if isinstance(m, Message)
    ]
    originate = next(m for m in sent if m.action == "Originate")
    assert originate.get_all("variable") == [
        "IDTRONIC_CALLBACK=abc123",
        "__CALLEE_HOLD=3",
        "AFTER_HOLD=3",
        "VAR_A=1,VAR_B=2",
    ]


def test_empty_value_and_case_insensitive_get() -> None:
    (msg,) = decode(b"Event: Newchannel\r\nAccountCode: \r\nUNIQUEID: 1.2\r\n\r\n", expect_banner=False)
    assert isinstance(msg, Message)
    assert msg.get("AccountCode") == ""
    assert msg.get("uniqueid") == "1.2"
    assert msg.get("missing") is None and "AccountCode" in msg


def test_old_plain_format_loads_like_repr() -> None:
    # ami-success.txt is in the older plain-text format: it must load to CRLF lines all the same.
    items = decode(transcripts.stream("ami-success.txt", "in"), expect_banner=True)
    assert isinstance(items[0], Banner)
    assert any(isinstance(m, Message) and m.event == "OriginateResponse" for m in items)
    assert transcripts.load("ami-success.txt")[1].data == b"Action: Login\r\n"


def test_garbage_line_is_reported_not_fatal() -> None:
    dec = AmiDecoder(expect_banner=True)
    items = dec.receive_data(
        b"Asterisk Call Manager/11.0.0\r\nResponse: Success\r\nthis is garbage\r\n"
        b"ActionID: a1\r\n\r\n\r\n\r\n\x00\xff\r\nEvent: X\r\n\r\n"
    )
    assert items[0] == Banner("Asterisk Call Manager/11.0.0")
    assert items[1] == BadLine(b"this is garbage")
    assert items[2] == Message((("Response", "Success"), ("ActionID", "a1")))
    assert items[3] == BadLine(b"\x00\xff")
    assert items[4] == Message((("Event", "X"),))


def test_bare_lf_is_accepted() -> None:
    assert decode(b"Event: X\nA: b\n\n", expect_banner=False) == [Message((("Event", "X"), ("A", "b")))]


def test_line_and_message_bounds() -> None:
    dec = AmiDecoder(expect_banner=False, max_line=100, max_message=1000)
    with pytest.raises(FrameTooLarge):
        dec.receive_data(b"A" * 101)  # no end of line in sight
    dec = AmiDecoder(expect_banner=False, max_line=100, max_message=1000)
    with pytest.raises(FrameTooLarge):
        dec.receive_data(b"Key: " + b"v" * 200 + b"\r\n")
    dec = AmiDecoder(expect_banner=False, max_line=100, max_message=1000)
    with pytest.raises(FrameTooLarge):
        for _ in range(100):
            dec.receive_data(b"Output: " + b"x" * 50 + b"\r\n")


@pytest.mark.parametrize("bad", ["a\r\nAction: Originate", "x\ny", "z\r"])
def test_encoder_refuses_header_injection(bad: str) -> None:
    with pytest.raises(ValueError):
        encode_action("Originate", "a", [("Channel", bad)])
    with pytest.raises(ValueError):
        encode_message([(bad, "v")])


def test_encoder_refuses_bad_names() -> None:
    for name in ("", "A: B"):
        with pytest.raises(ValueError):
            encode_message([(name, "v")])


# -- Hypothesis -------------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=4000), max_size=60))
def test_random_splits_of_a_long_session(chunks: list[int]) -> None:
    big = transcripts.stream("ami-drop-kicked-session.txt", "in")
    assert decode(big, expect_banner=True, chunks=chunks) == decode(big, expect_banner=True)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=20), st.booleans())
def test_fuzz_never_crashes(chunks: list[bytes], banner: bool) -> None:
    dec = AmiDecoder(expect_banner=banner, max_line=512, max_message=4096)
    for chunk in chunks:
        try:
            dec.receive_data(chunk)
        except FrameTooLarge:
            dec = AmiDecoder(expect_banner=False, max_line=512, max_message=4096)


_keys = (
    st.text(
        st.characters(blacklist_characters=":\r\n", blacklist_categories=("Cs",)), min_size=1, max_size=20
    )
    .map(str.strip)
    .filter(bool)
)
_values = st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=40)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.lists(st.tuples(_keys, _values), min_size=1, max_size=8), min_size=1, max_size=5),
    st.integers(min_value=1, max_value=7),
)
def test_round_trip(messages: list[list[tuple[str, str]]], step: int) -> None:
    data = b"".join(encode_message(m) for m in messages)
    dec = AmiDecoder(expect_banner=False)
    got: list[Item] = []
    for i in range(0, len(data), step):
        got.extend(dec.receive_data(data[i : i + step]))
    assert got == [Message(tuple(m)) for m in messages]
