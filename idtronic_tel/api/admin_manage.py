"""The operator's console pages that change things: merchants (a new key shown once) and cardholders
(lock, unlock, an enrollment received by phone or fax)."""

from __future__ import annotations

from typing import Any

from .admin_views import logout_form, messages, page, table
from .identity import card_first8_field, identity_fields
from .routing import Reply
from .web import Html, Visit, alert, field, status, tag


def merchants(
    visit: Visit,
    listing: list[dict[str, Any]],
    new_key: dict[str, Any] | None = None,
    message: str | None = None,
    error: str | None = None,
    fields: dict[str, str] | None = None,
) -> Reply:
    def actions(merchant: dict[str, Any]) -> Html:
        def button(action: str, label: str, css: str) -> Html:
            return visit.form_tag(
                "/admin/marchands/action",
                tag("input", type="hidden", name="merchant", value=merchant["id"]),
                tag("input", type="hidden", name="action", value=action),
                tag("button", label, type="submit", class_=css, aria_label=f"{label} : {merchant['name']}"),
                class_="inline",
            )

        return join_html(
            button("rotate", "Nouvelle clé", "secondary"), button("remove", "Supprimer", "danger")
        )

    fields = fields or {}
    add = visit.form_tag(
        "/admin/marchands",
        field(
            "Nom",
            "name",
            error=fields.get("name") and "De 1 à 200 caractères.",
            form="merchant",
            required=True,
            maxlength="200",
        ),
        field(
            "Domaine du site (facultatif)",
            "domain",
            error=fields.get("domain") and "Un nom de domaine, par exemple boutique.example.fr.",
            form="merchant",
            hint="Les SMS de code se terminent alors par @domaine #code (remplissage automatique).",
            maxlength="253",
        ),
        tag("button", "Ajouter le marchand", type="submit"),
        id="merchant-form",
    )
    shown = None
    if new_key is not None:
        shown = tag(
            "div",
            status(
                f"Nouvelle clé API de {_name_of(listing, new_key['id'])} ({new_key['id']}) :", id="admin-done"
            ),
            tag("p", new_key["api_key"], class_="secret", id="new-key"),
            tag("p", "Notez-la maintenant : elle ne sera plus jamais affichée.", class_="hint"),
        )
    rows = [
        (
            m["name"],
            m["domain"] or "—",
            m["id"],
            m["key_hint"],
            "suspendu" if m["suspended"] else "actif",
            actions(m),
        )
        for m in listing
    ]
    body = (
        tag("h1", "Marchands"),
        *messages(message, error),
        shown,
        table(
            "merchants", ("Nom", "Domaine", "Identifiant", "Clé", "État", "Actions"), rows, "Aucun marchand."
        ),
        tag("h2", "Ajouter un marchand"),
        add,
        logout_form(visit),
    )
    return page(visit, "Marchands", *body, status=422 if error else 200, here="/admin/marchands")


def _name_of(listing: list[dict[str, Any]], merchant_id: str) -> str:
    return next((str(m["name"]) for m in listing if m["id"] == merchant_id), merchant_id)


def join_html(*parts: Html) -> Html:
    return Html("".join(parts))


def cardholders(
    visit: Visit,
    values: dict[str, str] | None = None,
    errors: dict[str, str] | None = None,
    enrolled: str | None = None,
    message: str | None = None,
    error: str | None = None,
) -> Reply:
    errors = errors or {}
    if errors and "card_first8" not in errors:
        errors["card_first8"] = "Saisissez à nouveau les 8 premiers chiffres de la carte."
    lock = visit.form_tag(
        "/admin/titulaires/verrou",
        field(
            "Numéro d'identification",
            "identifier",
            form="lock",
            inputmode="numeric",
            maxlength="13",
            required=True,
        ),
        field("Motif (facultatif)", "reason", form="lock", maxlength="500"),
        tag("button", "Bloquer", type="submit", name="action", value="lock", class_="danger"),
        tag("button", "Débloquer", type="submit", name="action", value="unlock"),
        id="lock-form",
    )
    enroll = visit.form_tag(
        "/admin/titulaires",
        alert("Vérifiez les champs signalés.", id="enroll-error") if errors else None,
        field(
            "Reçue par",
            "channel",
            (values or {}).get("channel", "phone"),
            errors.get("channel"),
            form="operator-enroll",
            kind="select",
            options=(("phone", "Téléphone"), ("fax", "Fax")),
        ),
        *identity_fields(values or {}, errors, "operator-enroll"),
        card_first8_field(
            errors.get("card_first8"),
            "operator-enroll",
            "Le titulaire sera rappelé sur son mobile pour taper les 8 derniers chiffres.",
        ),
        tag("button", "Enregistrer l'inscription", type="submit"),
        id="operator-enroll-form",
        novalidate=True,
    )
    done = None
    if enrolled is not None:
        done = status(
            f"Inscription enregistrée : numéro d'identification {enrolled} (à communiquer au titulaire). "
            "Le rappel est programmé.",
            id="admin-done",
        )
    body = (
        tag("h1", "Titulaires"),
        *messages(message, error),
        done,
        tag("h2", "Bloquer ou débloquer"),
        lock,
        tag("h2", "Inscription reçue par téléphone ou fax"),
        tag("p", "Les mêmes règles que l'inscription sur le web ; le canal est enregistré.", class_="hint"),
        enroll,
        logout_form(visit),
    )
    failed = bool(errors or error)
    return page(visit, "Titulaires", *body, status=422 if failed else 200, here="/admin/titulaires")
