"""The demo shop's articles, its basket, and its pages: the catalogue and basket, the identification
number, the code."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..api import french
from ..api.identity import code_field, identifier_field
from ..api.routing import Reply
from ..api.web import Html, Visit, alert, tag
from ..api.web import status as good_news

TITLE = "Boutique Démo"
ARTICLES = {
    "carnet": ("Carnet de notes", 1290),
    "tasse": ("Tasse « id-tronic »", 990),
    "tshirt": ("T-shirt en coton bio", 2490),
    "stylo": ("Stylo plume", 1850),
}


@dataclass
class Basket:
    items: dict[str, int] = field(default_factory=dict)
    payment: dict[str, Any] | None = None  # the pending payment, as the API answered it
    identifier: str = ""
    paid: dict[str, Any] | None = None  # the last validated payment (the receipt page)

    def total(self) -> int:
        return sum(ARTICLES[name][1] * count for name, count in self.items.items())


def lines(basket: Basket) -> Html:
    rows = [
        tag(
            "tr",
            tag("td", ARTICLES[name][0]),
            tag("td", str(count)),
            tag("td", french.euros(ARTICLES[name][1] * count)),
        )
        for name, count in basket.items.items()
    ]
    return tag(
        "div",
        tag(
            "table",
            tag("thead", tag("tr", tag("th", "Article"), tag("th", "Quantité"), tag("th", "Prix"))),
            tag("tbody", rows),
        ),
        tag("p", "Total : ", tag("span", french.euros(basket.total()), id="total"), class_="total"),
        class_="scroll",
    )


def catalogue(
    visit: Visit, basket: Basket, notice: str | None, error: str | None = None, status: int = 200
) -> Reply:
    def button(name: str, action: str, label: str, css: str = "") -> Html:
        return visit.form_tag(
            "/demo/shop/basket",
            tag("input", type="hidden", name="article", value=name),
            tag("input", type="hidden", name="action", value=action),
            tag(
                "button",
                label,
                type="submit",
                class_=css or None,
                aria_label=f"{label} : {ARTICLES[name][0]}",
            ),
            class_="inline",
        )

    articles = tag(
        "ul",
        [
            tag(
                "li",
                tag("span", tag("strong", label), " ", french.euros(price)),
                tag(
                    "span",
                    button(name, "add", "Ajouter"),
                    button(name, "remove", "Retirer", "secondary") if basket.items.get(name) else None,
                ),
                id=f"article-{name}",
            )
            for name, (label, price) in ARTICLES.items()
        ],
        class_="articles",
    )
    cart: list[object] = [tag("h2", "Votre panier")]
    if basket.items:
        cart += [
            lines(basket),
            tag("p", tag("a", "Payer avec id-tronic", href="/demo/shop/checkout", id="checkout")),
        ]
    else:
        cart.append(tag("p", "Votre panier est vide.", id="empty"))
    body = (
        tag("h1", TITLE),
        tag("p", "Une petite boutique pour essayer le paiement par id-tronic.", class_="lead"),
        alert(error, id="shop-error") if error else None,
        articles,
        *cart,
    )
    return visit.page(TITLE, *body, notice=notice, status=status, here="/demo/shop")


def ask_identifier(
    visit: Visit,
    basket: Basket,
    notice: str | None,
    identifier: str = "",
    error: str | None = None,
    status: int = 200,
) -> Reply:
    form = visit.form_tag(
        "/demo/shop/checkout",
        identifier_field(
            identifier, error, "pay", "Le numéro reçu à votre inscription id-tronic : 10 chiffres."
        ),
        tag("button", "Recevoir mon code par SMS", type="submit"),
        id="pay-form",
        novalidate=True,
    )
    body = (
        tag("h1", "Paiement par id-tronic"),
        alert(error, id="pay-error") if error else None,
        lines(basket),
        form,
        tag("p", tag("a", "Retour au panier", href="/demo/shop")),
    )
    title = ("Erreur : " if error else "") + f"{TITLE} : paiement"
    return visit.page(title, *body, notice=notice, status=status, here="/demo/shop")


def ask_code(
    visit: Visit,
    basket: Basket,
    error: str | None = None,
    notice: str | None = None,
    status: int = 200,
    info: str | None = None,
) -> Reply:
    assert basket.payment is not None
    form = visit.form_tag(
        "/demo/shop/confirm",
        code_field(None, "confirm"),
        tag("button", "Valider le paiement", type="submit"),
        id="confirm-form",
        novalidate=True,
    )
    resend = visit.form_tag(
        "/demo/shop/resend",
        tag("button", "Renvoyer le code", type="submit", class_="secondary"),
        id="resend-form",
        class_="inline",
    )
    cancel = visit.form_tag(
        "/demo/shop/cancel",
        tag("button", "Annuler le paiement", type="submit", class_="secondary"),
        id="cancel-form",
        class_="inline",
    )
    body = (
        tag("h1", "Paiement par id-tronic"),
        alert(error, id="confirm-error") if error else None,
        good_news(info or "Un code vous a été envoyé par SMS.", id="code-sent"),
        tag(
            "p",
            f"Montant : {french.euros(int(basket.payment['amount']))} — numéro d'identification "
            f"{french.masked_identifier(basket.identifier)}.",
        ),
        form,
        resend,
        cancel,
    )
    title = ("Erreur : " if error else "") + f"{TITLE} : code"
    return visit.page(title, *body, notice=notice, status=status, here="/demo/shop")
