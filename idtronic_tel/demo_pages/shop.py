"""The demo shop (`/demo/shop`, demo mode only): a few articles, a basket, and a checkout paid with
id-tronic exactly as a merchant's site would do it: its server calls the merchant API with its own key
(`merchant_api`): the identification number creates a payment ("un code vous a été envoyé"), the code
from the SMS confirms it. A wrong code, an expired code, a refused cardholder (unknown, locked or
suspended: the API gives one answer for the three) and a suspended service are said plainly; "renvoyer
le code" follows the API's resend rules (its Retry-After, its limit).

The basket lives in memory, keyed by an HttpOnly cookie (path /demo/shop); the shop never sees a card
digit, and the code is only posted, never written back."""

from __future__ import annotations

import datetime as dt
import itertools
import re
import secrets
from collections import OrderedDict
from typing import Any

from ..api import french
from ..api.routing import Reply, Route
from ..api.web import Kit, Visit, status, tag
from .merchant_api import Answer, MerchantApi
from .shop_views import ARTICLES, TITLE, Basket, ask_code, ask_identifier, catalogue

COOKIE = "idt_shop"
MAX_BASKETS = 1000  # the oldest are forgotten
_IDENTIFIER = re.compile(r"\d{10}")
_REFUSED = (
    "Paiement impossible avec ce numéro d'identification : il n'est pas inscrit, ou son accès est "
    "bloqué ou suspendu. Vérifiez le numéro, ou contactez votre banque."
)
_UNKNOWN_SHOP = "La boutique n'est pas reconnue par id-tronic (sa clé API a été refusée ou remplacée)."
_TRY_AGAIN = "Le service de paiement n'a pas répondu : réessayez dans un instant."


class Shop:
    def __init__(self, api: MerchantApi) -> None:
        self.api = api
        self.baskets: OrderedDict[str, Basket] = OrderedDict()
        self.orders = itertools.count(1)

    def basket(self, visit: Visit) -> Basket:
        key = visit.cookie(COOKIE)
        if key is None or key not in self.baskets:
            key = secrets.token_urlsafe(18)
            visit.set_cookie(COOKIE, key, "/demo/shop")
            self.baskets[key] = Basket()
            while len(self.baskets) > MAX_BASKETS:
                self.baskets.popitem(last=False)
        self.baskets.move_to_end(key)
        return self.baskets[key]

    async def notice(self) -> str | None:
        """The public notice while id-tronic is suspended (GET /v1/notice, as any merchant may read it)."""
        try:
            answer = await self.api.call("GET", "/v1/notice")
        except Exception:
            return None
        return str(answer.body.get("notice") or "") if answer.body.get("suspended") else None


def routes(kit: Kit, shop: Shop) -> list[Route]:
    async def show(visit: Visit) -> Reply:
        basket = shop.basket(visit)
        return catalogue(visit, basket, await shop.notice())

    async def change(visit: Visit) -> Reply:
        form = visit.form()
        basket = shop.basket(visit)
        name = form.get("article", "")
        if name in ARTICLES and basket.payment is None:
            count = basket.items.get(name, 0) + (1 if form.get("action") == "add" else -1)
            if count > 0:
                basket.items[name] = min(count, 99)
            else:
                basket.items.pop(name, None)
        return visit.redirect("/demo/shop")

    async def checkout(visit: Visit) -> Reply:
        basket = shop.basket(visit)
        if basket.payment is not None:
            return visit.redirect("/demo/shop/code")
        if not basket.items:
            return visit.redirect("/demo/shop")
        return ask_identifier(visit, basket, await shop.notice())

    async def pay(visit: Visit) -> Reply:
        form = visit.form()
        basket = shop.basket(visit)
        if basket.payment is not None:
            return visit.redirect("/demo/shop/code")
        if not basket.items:
            return visit.redirect("/demo/shop")
        identifier = french.digits_only(form.get("identifier", ""))
        if not _IDENTIFIER.fullmatch(identifier):
            message = "Votre numéro d'identification : 10 chiffres."
            return ask_identifier(visit, basket, None, identifier, message, 422)
        body = {
            "identifier": identifier,
            "amount": basket.total(),
            "currency": "EUR",
            "reference": f"boutique-{next(shop.orders)}",
            "description": ", ".join(f"{n} x {ARTICLES[a][0]}" for a, n in basket.items.items()),
        }
        answer = await _call(shop, "POST", "/v1/payments", body)
        if answer.status == 201:
            basket.payment, basket.identifier = answer.body, identifier
            return visit.redirect("/demo/shop/code")
        if answer.error == "invalid_fields" and "identifier" in answer.body.get("fields", {}):
            message = french.problem(str(answer.body["fields"]["identifier"]))
            return ask_identifier(visit, basket, None, identifier, message, 422)
        message, notice = _plainly(answer)
        return ask_identifier(visit, basket, notice, identifier, message, answer.status)

    async def code(visit: Visit) -> Reply:
        basket = shop.basket(visit)
        if basket.payment is None:
            return visit.redirect("/demo/shop")
        return ask_code(visit, basket)

    async def confirm(visit: Visit) -> Reply:
        form = visit.form()
        basket = shop.basket(visit)
        payment = basket.payment
        if payment is None:
            return visit.redirect("/demo/shop")
        token = french.digits_only(form.get("token", ""))
        if not re.fullmatch(r"\d{6}", token):
            return ask_code(visit, basket, "Le code reçu par SMS a 6 chiffres.", status=422)
        answer = await _call(shop, "POST", f"/v1/payments/{payment['id']}/confirm", {"token": token})
        if answer.status == 200:
            basket.paid, basket.payment, basket.items = answer.body, None, {}
            return visit.redirect("/demo/shop/paid")
        if answer.error == "invalid_token" and answer.body.get("status") == "pending":
            message = wrong_code(answer.body, payment, dt.datetime.now(dt.UTC))
            return ask_code(visit, basket, message, status=422)
        if answer.error in ("invalid_token", "not_pending"):
            basket.payment = None
            ended = str(answer.body.get("status", "failed"))
            return catalogue(visit, basket, None, _ENDED.get(ended, _ENDED["failed"]), status=answer.status)
        message, notice = _plainly(answer)
        return ask_code(visit, basket, message, notice, answer.status)

    async def resend(visit: Visit) -> Reply:
        visit.form()
        basket = shop.basket(visit)
        payment = basket.payment
        if payment is None:
            return visit.redirect("/demo/shop")
        answer = await _call(shop, "POST", f"/v1/payments/{payment['id']}/resend", {})
        if answer.status == 200:
            basket.payment = answer.body
            return ask_code(
                visit, basket, info="Un nouveau code vient de partir par SMS ; l'ancien ne vaut plus."
            )
        if answer.status == 429:
            wait = answer.retry_after or 60
            message = f"Un nouveau code ne peut pas encore être envoyé : réessayez dans {wait} s."
        elif answer.error == "resend_limit":
            message = "Plus aucun renvoi n'est possible pour ce paiement : utilisez le dernier code reçu."
        elif answer.error == "not_pending":
            basket.payment = None
            ended = str(answer.body.get("status", "failed"))
            return catalogue(visit, basket, None, _ENDED.get(ended, _ENDED["failed"]), status=409)
        else:
            message, notice = _plainly(answer)
            return ask_code(visit, basket, message, notice, answer.status)
        return ask_code(visit, basket, message, status=answer.status)

    async def cancel(visit: Visit) -> Reply:
        visit.form()
        basket = shop.basket(visit)
        if basket.payment is not None:
            await _call(shop, "POST", f"/v1/payments/{basket.payment['id']}/cancel", {})
            basket.payment = None
        return visit.redirect("/demo/shop")

    async def paid(visit: Visit) -> Reply:
        basket = shop.basket(visit)
        if basket.paid is None:
            return visit.redirect("/demo/shop")
        receipt = basket.paid
        body = (
            tag("h1", "Paiement accepté"),
            status(
                f"Merci ! Votre commande {receipt['reference']} de "
                f"{french.euros(int(receipt['amount']), str(receipt['currency']))} est payée.",
                id="paid",
            ),
            tag("p", tag("a", "Retour à la boutique", href="/demo/shop")),
        )
        return visit.page(f"{TITLE} : paiement accepté", *body, here="/demo/shop")

    return [
        kit.route("GET", "/demo/shop", show, "demo page: shop", nav="Boutique"),
        kit.route("POST", "/demo/shop/basket", change, "demo: basket", limited=""),
        kit.route("GET", "/demo/shop/checkout", checkout, "demo page: checkout"),
        kit.route("POST", "/demo/shop/checkout", pay, "demo: pay with id-tronic", limited=""),
        kit.route("GET", "/demo/shop/code", code, "demo page: the code"),
        kit.route("POST", "/demo/shop/confirm", confirm, "demo: confirm the payment", limited=""),
        kit.route("POST", "/demo/shop/resend", resend, "demo: send a new code", limited=""),
        kit.route("POST", "/demo/shop/cancel", cancel, "demo: cancel the payment", limited=""),
        kit.route("GET", "/demo/shop/paid", paid, "demo page: paid"),
    ]


_ENDED = {
    "failed": "Paiement refusé : trop de codes erronés. Votre panier est conservé.",
    "expired": "Le paiement a expiré : recommencez quand vous voulez, votre panier est conservé.",
    "cancelled": "Paiement annulé.",
    "validated": "Ce paiement est déjà accepté.",
}


async def _call(shop: Shop, method: str, path: str, body: dict[str, Any]) -> Answer:
    try:
        return await shop.api.call(method, path, body)
    except Exception:  # the daemon did not answer (a connection refused, a timeout)
        return Answer(502, {"error": "unreachable"})


def _plainly(answer: Answer) -> tuple[str, str | None]:
    """What the shop says for the API's other answers; the notice too when id-tronic is suspended."""
    if answer.error == "service_suspended":
        notice = str(answer.body.get("notice") or "")
        return "Le paiement par id-tronic est suspendu pour le moment.", notice
    if answer.error == "payment_refused":
        return _REFUSED, None
    if answer.status == 401:
        return _UNKNOWN_SHOP, None
    if answer.status == 429:
        return f"Trop de demandes : réessayez dans {answer.retry_after or 60} s.", None
    return _TRY_AGAIN, None


def wrong_code(refusal: dict[str, Any], payment: dict[str, Any], now: dt.datetime) -> str:
    """What the shop says of a code refused while the payment is still pending: expired (the payment's
    `expires_at` has passed: only a new code helps) or wrong (with the attempts left)."""
    try:
        expired = dt.datetime.fromisoformat(str(payment.get("expires_at"))) <= now
    except ValueError:
        expired = False
    if expired:
        return "Ce code a expiré : demandez un nouveau code avec « Renvoyer le code »."
    left = int(refusal.get("attempts_remaining", 0))
    return f"Code incorrect. Il vous reste {left} essai{'s' if left > 1 else ''}."
