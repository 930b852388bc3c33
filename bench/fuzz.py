"""Fuzzing (issue 9 §10): Hypothesis runs of the SMPP framer, the FastAGI and AMI codecs, the HTTP request
parser of the merchant fast path and the HTTP body parser, each fed hostile bytes (random, and mutations of
what a real peer sends). A crash is any exception other than the documented error of the code under test;
the run ends with 0 crashes or with the smallest input that crashes.

    .venv/bin/python bench/fuzz.py --examples 100000             # the five targets, one after the other
    .venv/bin/python bench/fuzz.py --examples 2000 --target ami  # one target

tests/test_fuzz.py runs the same targets with a few hundred examples each. Results: bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from idtronic_tel.api import bodies  # noqa: E402
from idtronic_tel.api.errors import ApiError  # noqa: E402
from idtronic_tel.api.http11 import NEED_DATA, HandOver, Refusal, Request, RequestParser  # noqa: E402
from idtronic_tel.ivr.agi_codec import (  # noqa: E402
    AgiProtocolError,
    EnvParser,
    LineSplitter,
    Reply,
    ReplyParser,
)
from idtronic_tel.ivr.ami_codec import AmiDecoder, AmiProtocolError, Message  # noqa: E402
from idtronic_tel.smpp import codec  # noqa: E402
from idtronic_tel.smpp.receipts import UnusableId, is_receipt, parse_receipt  # noqa: E402

# ---- inputs ---------------------------------------------------------------------------------------------


def _mutate(data: bytes, program: bytes) -> bytes:
    """Apply `program` to `data`, 4 bytes per step (kind, position, position, value): flip a byte,
    insert bytes, delete some, or cut short. One binary draw: cheap to generate, and Hypothesis shrinks it."""
    out = bytearray(data)
    for i in range(0, len(program) - 3, 4):
        kind, high, low, value = program[i : i + 4]
        where = ((high << 8) | low) % (len(out) + 1)
        if kind % 4 == 0 and where < len(out):
            out[where] = value
        elif kind % 4 == 1:
            out[where:where] = program[i + 4 : i + 4 + value % 16] or bytes([value])
        elif kind % 4 == 2:
            del out[where : where + 1 + value % 8]
        elif kind % 4 == 3 and value < 32:  # cut short, now and then
            del out[where:]
    return bytes(out)


def mutated(seeds: list[bytes]) -> st.SearchStrategy[bytes]:
    """A real message with a few bytes flipped, inserted, deleted, or cut short."""
    return st.builds(_mutate, st.sampled_from(seeds), st.binary(max_size=24))


def _cut(pieces: list[bytes], cuts: bytes) -> list[bytes]:
    data = b"".join(pieces)
    places = sorted(c * len(data) // 255 for c in cuts)
    return [data[a:b] for a, b in zip([0, *places], [*places, len(data)], strict=True)]


def stream(pieces: st.SearchStrategy[bytes], max_pieces: int = 6) -> st.SearchStrategy[list[bytes]]:
    """Pieces joined and cut at random places: what several TCP segments deliver."""
    return st.builds(_cut, st.lists(pieces, min_size=1, max_size=max_pieces), st.binary(max_size=6))


# SMPP: what an SMSC sends (codec.encode: receipts, responses, a mobile-originated message).
_SMPP_SEEDS = [
    codec.encode(
        "deliver_sm",
        1,
        esm_class=4,
        source_addr="33611223344",
        destination_addr="TEST",
        short_message=b"id:0000232A sub:001 dlvrd:001 submit date:2611261603 done date:2611261603 "
        b"stat:DELIVRD err:000 text:",
        receipted_message_id="0000232A",
        message_state=2,
    ),
    codec.encode("deliver_sm", 2, esm_class=4, short_message=b"id:12345 stat:UNDELIV err:001"),
    codec.encode("deliver_sm", 3, source_addr="33611223344", short_message=b"hello"),
    codec.encode("submit_sm_resp", 4, message_id="0000232A"),
    codec.encode("bind_transceiver_resp", 5, system_id="SMSC"),
    codec.encode("enquire_link", 6),
    codec.encode("enquire_link_resp", 7),
    codec.encode("unbind", 8),
    codec.generic_nack(9, codec.ESME_RINVCMDID),
]

# FastAGI: an environment block, then replies (recorded shapes of Asterisk 22, docs/protocols/AGI.md).
_AGI_ENV = [
    b"agi_network: yes",
    b"agi_network_script: idtronic?attempt=cb_123",
    b"agi_request: agi://127.0.0.1:4573/idtronic?attempt=cb_123",
    b"agi_channel: PJSIP/trunk-00000001",
    b"agi_language: fr",
    b"agi_callerid: 33611223344",
    b"agi_arg_1: x",
    b"",
]
_AGI_REPLIES = [
    b"200 result=0",
    b"200 result=1",
    b"200 result=-1",
    b"200 result=12345678 (timeout)",
    b"200 result=35 endpos=12345",
    b"200 result=0 (timeout) endpos=1234",
    b"100 result=0 Trying...",
    b"510 Invalid or unknown command",
    b"511 Command Not Permitted on a dead channel or intercept routine",
    b"520-Invalid command syntax.  Proper usage follows:",
    b"Usage: GET DATA <file to be streamed> [timeout] [maxdigits]",
    b"520 End of proper usage.",
    b"HANGUP",
]


def _agi_session(env_program: bytes, replies: list[bytes], program: bytes) -> bytes:
    """The environment block (mutated now and then), then replies (mutated)."""
    env = _mutate(b"\n".join(_AGI_ENV) + b"\n", env_program)
    return env + _mutate(b"\n".join(replies) + b"\n", program)


# AMI: a banner, then messages of "Key: value" lines ended by an empty line (CRLF, or LF).
_AMI_LINES = [
    b"Asterisk Call Manager/11.0.0",
    b"Response: Success",
    b"ActionID: idt-1",
    b"Message: Authentication accepted",
    b"Event: OriginateResponse",
    b"Response: Failure",
    b"Channel: Local/33611223344@idtronic-callback",
    b"Reason: 5",
    b"Uniqueid: 1700000000.1",
    b"Event: Hangup",
    b"Cause: 16",
    b"Output: some text: with colons",
    b"",
]


def _ami_messages(lines: list[bytes], end: bytes, program: bytes) -> bytes:
    return _mutate(end.join(lines) + end, program)


# HTTP: bodies of the API's routes, and shapes that broke json.loads (issue 9 §1).
_BODIES = [
    b'{"identifier": "4970123456", "amount": 4990, "currency": "EUR", "reference": "order-1"}',
    b'{"token": "123456"}',
    b'{"identifier": "4970123456", "token": "123456"}',
    b'{"notice": "Maintenance", "cardholder": "4970123456"}',
    b'{"last_name": "Martin", "first_name": "Claire", "birth_date": "1985-04-12", "mobile": "0611223344",'
    b' "card_first8": "49761234"}',
    b'{"reason": "fraud\\u0007"}',
    b'{"identifier": "\\ud800"}',
    b'{"amount": ' + b"9" * 5000 + b"}",
    b"[" * 40 + b"]" * 40,
    b'"' + b"[" * 40 + b'"',
    b'{"a": NaN, "b": Infinity, "c": 1e999}',
]
# HTTP requests as merchants send them (api/http11.py reads these; anything else it hands over or refuses).
_REQUESTS = [
    b"POST /v1/payments HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer idt_live_k\r\n"
    b"Content-Type: application/json\r\nIdempotency-Key: order-1\r\nContent-Length: 19\r\n\r\n"
    b'{"token": "123456"}',
    b"GET /v1/payments/pay_1?x=1&y HTTP/1.1\r\nHost: api\r\nConnection: keep-alive, close\r\n\r\n",
    b"POST /v1/payments/pay_1/confirm HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    b"HEAD /v1/payments HTTP/1.1\r\nX:\t a \t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\n\r\n",
]
_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(st.characters(codec="utf-8") | st.sampled_from("\ud800\udfff\x00\x1f\x7f\u2028"), max_size=30)
)
_json = st.recursive(
    _json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=12,
)


@st.composite
def _api_objects(draw: st.DrawFn) -> bytes:
    """An object with the API's field names and any values, in JSON (surrogates escaped) or raw UTF-8."""
    names = st.sampled_from(
        [
            "identifier",
            "amount",
            "currency",
            "reference",
            "description",
            "token",
            "notice",
            "reason",
            "mobile",
        ]
    )
    values = st.text(st.characters(codec="utf-8") | st.sampled_from("\ud800\x00\x7f"), max_size=40) | _json
    document = draw(st.dictionaries(names | st.text(max_size=8), values, max_size=6))
    text = json.dumps(document, ensure_ascii=draw(st.booleans()))
    return text.encode("utf-8", "surrogatepass")


def _fields_of(schema: bodies.BodySchema) -> st.SearchStrategy[tuple[bodies.BodySchema, bytes]]:
    """The schema's own fields with hostile values: the bodies that reach the per-field checks."""
    text = st.text(st.characters(codec="utf-8") | st.sampled_from("\ud800\x00\x7f"), max_size=40)
    values = text | st.integers() | _json
    fields = st.fixed_dictionaries({}, optional={f.name: values for f in schema.fields})
    body = fields.map(lambda d: json.dumps(d).encode())
    return st.tuples(st.just(schema), body)


def _deep(draw: st.DrawFn) -> bytes:
    depth = draw(st.integers(1, 3000))
    opener = draw(st.sampled_from([b"[", b"{", b'{"a":']))
    return opener * depth + draw(st.binary(max_size=10))


# ---- checks ---------------------------------------------------------------------------------------------


def check_smpp(chunks: list[bytes]) -> None:
    framer = codec.SmppCodec(max_length=4096)
    for chunk in chunks:
        for event in framer.receive_data(chunk):
            if isinstance(event, codec.Undecodable):
                codec.error_response(event)
            elif isinstance(event, codec.Pdu) and event.command == "deliver_sm" and is_receipt(event):
                with contextlib.suppress(UnusableId):  # documented: answered ESME_ROK and counted
                    parse_receipt(event)


def check_agi(chunks: list[bytes]) -> None:
    splitter, env, replies = LineSplitter(), EnvParser(), ReplyParser()
    in_env = True
    for chunk in chunks:
        for line in splitter.feed(chunk):
            if in_env:
                in_env = env.feed_line(line) is None
                continue
            event = replies.feed_line(line)
            if isinstance(event, Reply):
                (event.result_int(), event.timed_out)
            repr(event)


def check_ami(chunks: list[bytes]) -> None:
    decoder = AmiDecoder(expect_banner=True, max_line=512, max_message=4096)
    for chunk in chunks:
        for item in decoder.receive_data(chunk):
            if isinstance(item, Message):
                (item.event, item.response, item.action_id, item.get_all("Channel"))


_SCHEMAS: list[bodies.BodySchema] = [
    bodies.ENROLL,
    bodies.PAYMENT,
    bodies.TOKEN,
    bodies.SESSION,
    bodies.MERCHANT,
    bodies.REASON,
    bodies.SUSPEND,
    bodies.PROFILE_PATCH,
]


def check_requests(chunks: list[bytes]) -> None:
    parser = RequestParser(b"/v1/payments", 200)
    for chunk in chunks:
        parser.feed(chunk)
        while (event := parser.next_event()) is not NEED_DATA:
            if isinstance(event, Refusal):
                assert event.error.status in (400, 413), event
                return
            if isinstance(event, HandOver):
                assert event.data, event
                return
            assert isinstance(event, Request) and len(event.body) <= 200, event


def check_body(schema_and_body: tuple[bodies.BodySchema, bytes]) -> None:
    schema, raw = schema_and_body
    document = schema.parse(raw)
    # What was accepted can be stored and answered: UTF-8 and JSON take every text in it.
    json.dumps(document, ensure_ascii=False).encode("utf-8")


# ---- targets --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    name: str
    what: str
    inputs: st.SearchStrategy[Any]
    check: Callable[[Any], None]
    allowed: tuple[type[BaseException], ...] = ()  # documented errors the check lets through


TARGETS = [
    Target(
        "smpp",
        "SMPP framer and PDU decoding (SmppCodec.receive_data, error_response, parse_receipt): never raises",
        stream(mutated(_SMPP_SEEDS) | st.binary(max_size=300)),
        check_smpp,
    ),
    Target(
        "agi",
        "FastAGI codec (LineSplitter, EnvParser, ReplyParser): AgiProtocolError only",
        stream(
            st.builds(
                _agi_session,
                st.binary(max_size=8),
                st.lists(st.sampled_from(_AGI_REPLIES), max_size=12),
                st.binary(max_size=24),
            )
            | st.binary(max_size=300),
            max_pieces=2,
        ),
        check_agi,
        (AgiProtocolError,),
    ),
    Target(
        "ami",
        "AMI codec (AmiDecoder.receive_data): AmiProtocolError (FrameTooLarge) only",
        stream(
            st.builds(
                _ami_messages,
                st.lists(st.sampled_from(_AMI_LINES), max_size=12),
                st.sampled_from([b"\r\n", b"\n"]),
                st.binary(max_size=24),
            )
            | st.binary(max_size=300)
        ),
        check_ami,
        (AmiProtocolError,),
    ),
    Target(
        "http-request",
        "HTTP/1.1 request parser of the merchant fast path (RequestParser): events only, never raises",
        stream(mutated(_REQUESTS) | st.binary(max_size=300)),
        check_requests,
    ),
    Target(
        "http-body",
        "HTTP body parser (BodySchema.parse: safejson.loads, then the route's schema): ApiError only",
        st.tuples(
            st.sampled_from(_SCHEMAS),
            mutated(_BODIES) | _api_objects() | st.composite(_deep)() | st.binary(max_size=300),
        )
        | st.sampled_from(_SCHEMAS).flatmap(_fields_of),
        check_body,
        (ApiError,),
    ),
]


@dataclass
class Outcome:
    target: str
    examples: int = 0
    refused: int = 0  # inputs answered with the documented error
    crashes: int = 0
    seconds: float = 0.0
    crash: str = ""


def run(target: Target, examples: int, derandomize: bool = False) -> Outcome:
    """Runs `examples` inputs through the target (the same ones each time when `derandomize`, as the
    suite does); a crash is shrunk and reported, not raised."""
    outcome = Outcome(target.name)

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=derandomize,
        suppress_health_check=list(HealthCheck),
        phases=(Phase.generate, Phase.shrink),
    )
    @given(target.inputs)
    def one(data: Any) -> None:
        outcome.examples += 1
        try:
            target.check(data)
        except target.allowed:
            outcome.refused += 1

    start = time.monotonic()
    try:
        one()
    except Exception as exc:  # the shrunk crash: Hypothesis has printed the smallest input
        outcome.crashes += 1
        outcome.crash = f"{type(exc).__name__}: {exc}"
    outcome.seconds = time.monotonic() - start
    return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--examples", type=int, default=100_000, help="inputs per target (default 100000)")
    parser.add_argument("--target", choices=[t.name for t in TARGETS], action="append", help="default: all")
    args = parser.parse_args(argv)
    logging.getLogger("smpplib").setLevel(logging.ERROR)  # smpplib warns of every unknown TLV it skips
    failed = False
    for target in (t for t in TARGETS if not args.target or t.name in args.target):
        print(f"== {target.name}: {target.what}", flush=True)
        outcome = run(target, args.examples)
        failed = failed or outcome.crashes > 0
        print(
            f"   {outcome.examples} inputs, {outcome.refused} refused with the documented error, "
            f"{outcome.crashes} crashes, {outcome.seconds:.0f} s"
            + (f": {outcome.crash}" if outcome.crash else ""),
            flush=True,
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
