"""The operator's console pages that show things: login, state (links, queues, suspension), activity
and audit log, and the layout every console page shares (admin_manage: the pages that change things).
What they list is masked: identification numbers and mobile numbers keep their last digits only, and no
code, SMS text, card digit or key is ever read for them (core/activity.py)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from . import french
from .routing import Reply
from .web import Html, Visit, alert, field, status, tag

NAV = (
    ("/admin", "État"),
    ("/admin/activite", "Activité"),
    ("/admin/marchands", "Marchands"),
    ("/admin/titulaires", "Titulaires"),
)
_TITLE = "Console id-tronic"
_NO_STORE = {"cache-control": "no-store"}
_DIGITS = re.compile(r"\d{6,}")
_SCOPES = (("service", "Tout le service"), ("merchant", "Un marchand"), ("cardholder", "Un titulaire"))


def masked(text: str) -> str:
    """Every run of 6 digits or more keeps its last 4 (identification numbers, phone numbers)."""
    return _DIGITS.sub(lambda found: "•" * (len(found.group()) - 4) + found.group()[-4:], text)


def page(
    visit: Visit, title: str, *body: object, status: int = 200, notice: str | None = None, here: str = ""
) -> Reply:
    return visit.page(
        f"{title} : {_TITLE}", *body, status=status, notice=notice, here=here, headers=_NO_STORE
    )


def messages(message: str | None, error: str | None) -> list[Html]:
    return [
        alert(error, id="admin-error") if error else Html(""),
        status(message, id="admin-done") if message else Html(""),
    ]


def table(ident: str, heads: Iterable[str], rows: Iterable[Iterable[object]], empty: str) -> Html:
    rows = [list(row) for row in rows]
    if not rows:
        return tag("p", empty, id=ident, class_="hint")
    return tag(
        "div",
        tag(
            "table",
            tag("thead", tag("tr", [tag("th", head, scope="col") for head in heads])),
            tag("tbody", [tag("tr", [tag("td", cell) for cell in row]) for row in rows]),
            id=ident,
        ),
        class_="scroll",
    )


def logout_form(visit: Visit) -> Html:
    return visit.form_tag(
        "/admin/logout", tag("button", "Se déconnecter", type="submit", class_="secondary"), id="logout-form"
    )


def login(visit: Visit, error: str | None = None, info: str | None = None, status: int = 200) -> Reply:
    form = visit.form_tag(
        "/admin/login",
        field(
            "Clé d'opérateur",
            "key",
            error=error,
            form="login",
            hint="Le contenu du fichier operator.key du répertoire de données.",
            type="password",
            autocomplete="current-password",
            required=True,
        ),
        tag("button", "Se connecter", type="submit"),
        id="login-form",
    )
    body = (tag("h1", _TITLE), *messages(info, error), form)
    return visit.page(
        ("Erreur : " if error else "") + _TITLE, *body, status=status, nav=(), headers=_NO_STORE
    )


def state(
    visit: Visit,
    links: list[dict[str, Any]],
    counts: dict[str, Any],
    notice: str | None,
    message: str | None = None,
    error: str | None = None,
) -> Reply:
    def link_row(link: dict[str, Any]) -> list[object]:
        up = link["state"] == "up"
        window = f"{link['window_used']} / {link['window']}" if link["window"] is not None else "—"
        tps = "—" if link["tps"] is None else f"{link['tps']:.1f} SMS/s".replace(".", ",")
        if link["max_tps"]:
            tps += f" (max. {link['max_tps']:g})"
        return [
            "AMI (Asterisk)" if link["kind"] == "ami" else f"SMPP {link['name']}",
            tag(
                "span", "en service" if up else "coupé", class_="up" if up else "down", data_link=link["name"]
            ),
            french.paris_time(link["since"]),
            window,
            tps,
        ]

    queues = counts.get("queues", {})
    scope_fields = [
        field("Portée", "scope", "service", form="suspend", kind="select", options=_SCOPES),
        field(
            "Marchand ou titulaire",
            "target",
            form="suspend",
            hint="L'identifiant du marchand (mch_…) ou le numéro d'identification du titulaire.",
            maxlength="40",
        ),
    ]
    suspend = visit.form_tag(
        "/admin/suspension",
        field(
            "Avis affiché au public",
            "notice",
            form="suspend",
            kind="textarea",
            maxlength="1000",
            required=True,
        ),
        *scope_fields,
        tag("button", "Suspendre", type="submit", class_="danger"),
        id="suspend-form",
    )
    resume = visit.form_tag(
        "/admin/resume",
        field("Portée", "scope", "service", form="resume", kind="select", options=_SCOPES),
        field("Marchand ou titulaire", "target", form="resume", maxlength="40"),
        tag("button", "Reprendre", type="submit"),
        id="resume-form",
    )
    body = (
        tag("h1", "État du service"),
        *messages(message, error),
        tag(
            "p",
            "Service : ",
            tag("strong", "suspendu" if notice is not None else "en service", id="service-state"),
        ),
        tag("h2", "Liens"),
        table(
            "links",
            ("Lien", "État", "Depuis", "Fenêtre utilisée", "Débit"),
            [link_row(link) for link in links],
            "Aucun lien configuré.",
        ),
        tag("h2", "Files d'attente"),
        tag(
            "ul",
            tag("li", "SMS à envoyer : ", tag("strong", str(queues.get("sms_queued", 0)), id="sms-queued")),
            tag(
                "li",
                "Rappels en attente : ",
                tag("strong", str(queues.get("callbacks_waiting", 0)), id="callbacks-waiting"),
            ),
            tag("li", "Titulaires bloqués : ", str(counts.get("locked_cardholders", 0))),
        ),
        tag("h2", "Suspendre le service"),
        suspend,
        tag("h2", "Reprendre le service"),
        resume,
        logout_form(visit),
    )
    return page(visit, "État", *body, notice=notice, here="/admin")


def activity(visit: Visit, recent: dict[str, list[dict[str, Any]]]) -> Reply:
    def when(iso: str) -> str:
        return french.paris_time(iso)

    body = (
        tag("h1", "Activité récente"),
        tag("h2", "Paiements"),
        table(
            "payments",
            ("Créé", "Marchand", "Titulaire", "Montant", "État", "Codes faux"),
            [
                (
                    when(p["created_at"]),
                    p["merchant"],
                    french.masked_identifier(p["identifier"]),
                    french.euros(p["amount"], p["currency"]),
                    p["status"],
                    str(p["wrong_tokens"]),
                )
                for p in recent["payments"]
            ],
            "Aucun paiement.",
        ),
        tag("h2", "SMS"),
        table(
            "sms",
            ("Créé", "Objet", "Destinataire", "État", "Lien"),
            [
                (when(m["created_at"]), m["purpose"], masked(m["destination"]), m["state"], m["bind"])
                for m in recent["sms"]
            ],
            "Aucun SMS.",
        ),
        tag("h2", "Rappels"),
        table(
            "callbacks",
            ("Créé", "Type", "Titulaire", "Mobile", "État", "Appels"),
            [
                (
                    when(c["created_at"]),
                    c["kind"],
                    french.masked_identifier(c["identifier"]),
                    masked(c["mobile"]),
                    c["state"],
                    str(c["calls_made"]),
                )
                for c in recent["callbacks"]
            ],
            "Aucun rappel.",
        ),
        tag("h2", "Journal d'audit"),
        table(
            "audit",
            ("Quand", "Qui", "Action", "Sujet", "Détail"),
            [
                (when(a["at"]), a["actor"], a["action"], masked(a["subject"]), masked(a["detail"]))
                for a in recent["audit"]
            ],
            "Le journal est vide.",
        ),
        logout_form(visit),
    )
    return page(visit, "Activité", *body, here="/admin/activite")
