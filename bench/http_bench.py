"""HTTP layer benchmark (issue 11 §2): the CPU the API listener spends per merchant request, without the
core: the bytes of keep-alive merchant requests (a create, a confirm) fed to the front in process, answered
by ApiResource (routing, authentication, rate limits, body schema, JSON, metrics) on routes whose handlers
answer at once, the merchant's key and the suspension state coming from the core's caches as they do in
the daemon.

    .venv/bin/python bench/http_bench.py [--front twisted|fast|both] [--requests N] [--rounds R]

`twisted` is Twisted's channel behind api/front.py (the only front before the fast path), `fast` the
merchant fast path (api/fastpath.py). Prints the CPU (process time) per request, best of R rounds. The
daemon's own copy of the code is taken from PYTHONPATH when set (to measure an older commit's front:
`PYTHONPATH=<copy> .venv/bin/python bench/http_bench.py --front twisted`)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.append(str(Path(__file__).resolve().parent.parent))  # after PYTHONPATH: a copy there wins

from twisted.internet.address import IPv4Address
from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from idtronic_tel.api import bodies
from idtronic_tel.api.front import Front
from idtronic_tel.api.resource import ApiResource
from idtronic_tel.api.routing import Call, Reply, Route, Router
from idtronic_tel.config_schema import ApiConfig, HttpConfig
from idtronic_tel.core.merchants import MerchantAuth

KEY = "idt_live_bench-merchant-key-0123456789abcdefghijklmnop"
PAYMENT = {  # the shape of a payment as the API answers it
    "id": "pay_01JD7Q8G3K9XW2M4N5P6R7S8T9",
    "status": "validated",
    "amount": 4990,
    "currency": "EUR",
    "reference": "order-42",
    "description": None,
    "identifier": "1234567890",
    "created_at": "2026-11-28T04:30:00Z",
    "expires_at": "2026-11-28T04:40:00Z",
    "validated_at": "2026-11-28T04:30:05Z",
    "sms": "delivered",
    "resends": 0,
    "attempts": 1,
}


class Core:
    """What ApiResource asks of the core on a merchant route, answered from its caches."""

    def __init__(self) -> None:
        self.merchant = MerchantAuth("mer_1", "Boutique", None, False, "")

    def authenticate_merchant(self, key: str) -> Any:
        return succeed(self.merchant if key == KEY else None)

    def suspension_state(self) -> Any:
        return succeed((False, ""))


def router() -> Router:
    async def create(call: Call) -> Reply:
        return Reply(201, {**PAYMENT, "status": "pending", "sms": "queued"})

    async def confirm(call: Call) -> Reply:
        return Reply(200, PAYMENT)

    return Router(
        [
            Route("POST", "/v1/payments", create, "merchant", "", {}, bodies.PAYMENT, suspendable=True),
            Route(
                "POST",
                "/v1/payments/{id}/confirm",
                confirm,
                "merchant",
                "",
                {},
                bodies.TOKEN,
                suspendable=True,
            ),
        ]
    )


def requests() -> list[bytes]:
    create = json.dumps(
        {"identifier": "1234567890", "amount": 4990, "currency": "EUR", "reference": "order-42"}
    ).encode()
    confirm = b'{"token": "123456"}'
    head = (
        "{} {} HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nAuthorization: Bearer {}\r\n"
        "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n"
    )
    return [
        head.format("POST", "/v1/payments", KEY, len(create)).encode() + create,
        head.format("POST", f"/v1/payments/{PAYMENT['id']}/confirm", KEY, len(confirm)).encode() + confirm,
    ]


def site(front: str) -> Front:
    http = HttpConfig()
    api = ApiConfig(merchant_requests_per_minute=10**9, merchant_payments_per_minute=10**9)
    resource = ApiResource(Core(), router(), http, api)  # type: ignore[arg-type]
    if front == "fast":
        from idtronic_tel.api.fastpath import FastFront

        return FastFront(resource, http, Clock())
    return Front(resource, http, Clock())


def measure(front: str, count: int) -> float:
    """µs of CPU per request over `count` requests on one keep-alive connection."""
    peer = IPv4Address("TCP", "127.0.0.1", 40000)
    channel = site(front).buildProtocol(peer)
    assert channel is not None
    transport = StringTransport(peerAddress=peer)
    channel.makeConnection(transport)
    data = requests()
    started = time.process_time()
    for i in range(count):
        channel.dataReceived(data[i % 2])
        answer = transport.value()
        transport.clear()
        if not answer.startswith((b"HTTP/1.1 201", b"HTTP/1.1 200")):
            raise SystemExit(f"unexpected answer: {answer[:200]!r}")
    return (time.process_time() - started) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--front", choices=("twisted", "fast", "both"), default="both")
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    import idtronic_tel

    print(f"http_bench: code from {Path(idtronic_tel.__file__).parent}, Python {sys.version.split()[0]}")
    fronts = ("twisted", "fast") if args.front == "both" else (args.front,)
    best = {front: min(measure(front, args.requests) for _ in range(args.rounds)) for front in fronts}
    for front, micros in best.items():
        print(f"{front:8} {micros:7.1f} µs of CPU per request (best of {args.rounds} x {args.requests})")


if __name__ == "__main__":
    main()
