"""The demo's own pages, served by the daemon in demo mode only (absent, 404, otherwise): the shop
(`/demo/shop`, a merchant paying with id-tronic through the merchant API) and the handset simulator
(`/demo/phone`, the phone of any number the daemon calls or texts)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..api.routing import Route
from ..api.web import Kit, static_routes
from ..daemon import Daemon
from ..simulators.phones import PhoneBoard
from . import phone, shop
from .merchant_api import MerchantApi

NAV = (
    ("/demo/shop", "Boutique"),
    ("/demo/phone", "Téléphone"),
    ("/", "Inscription"),
    ("/profile", "Mon espace"),
)


def routes(
    daemon: Daemon, board: PhoneBoard, merchant_key: Callable[[], str | None], reactor: Any
) -> list[Route]:
    """`merchant_key()`: the demo merchant's API key (None until the demo has registered it)."""
    kit = Kit(daemon.core, NAV)
    api = MerchantApi(reactor, lambda: daemon.listeners["http"].url, merchant_key)
    return [
        *phone.routes(kit, board),
        *shop.routes(kit, shop.Shop(api)),
        *static_routes(
            "idtronic_tel.demo_pages",
            {"/demo/static/phone.js": ("phone.js", "text/javascript; charset=utf-8")},
        ),
    ]
