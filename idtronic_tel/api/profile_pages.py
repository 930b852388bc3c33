"""The personal section's pages (`/profile`): the identification number, the code received by SMS, then
the cardholder's data. The session is the core's profile session, kept in an HttpOnly cookie (path
/profile) that the core expires after `profile.session_idle` of inactivity."""

from __future__ import annotations

import re
from typing import Any

from ..core.errors import InvalidInput, InvalidToken, SessionInvalid
from ..core.facade import Core
from ..core.views import wire
from . import french
from .identity import NAMES, code_field, identifier_field, identity_fields
from .routing import Reply, Route
from .web import Kit, Visit, alert, status, tag

SESSION_COOKIE = "idt_profile"
_IDENTIFIER = re.compile(r"\d{10}")
_CODE = re.compile(r"\d{6}")
_EXPIRED = "Votre session a expiré : demandez un nouveau code."


def routes(core: Core, kit: Kit) -> list[Route]:
    async def show(visit: Visit) -> Reply:
        notice = await visit.notice()
        if notice is not None:
            return _closed(visit, notice)
        session = visit.cookie(SESSION_COOKIE)
        if session is None:
            return _ask_identifier(visit)
        try:
            profile = wire(await core.get_profile(session))
        except SessionInvalid:
            visit.clear_cookie(SESSION_COOKIE, "/profile")
            return _ask_identifier(visit, info=_EXPIRED)
        return _profile_page(visit, profile)

    async def send_code(visit: Visit) -> Reply:
        form = visit.form()
        notice = await visit.notice()
        if notice is not None:
            return _closed(visit, notice, 503)
        identifier = french.digits_only(form.get("identifier", ""))
        if not _IDENTIFIER.fullmatch(identifier):
            return _ask_identifier(visit, identifier, "Votre numéro d'identification : 10 chiffres.")
        await core.profile_challenge(identifier)
        return _ask_code(visit, identifier)

    async def open_session(visit: Visit) -> Reply:
        form = visit.form()
        notice = await visit.notice()
        if notice is not None:
            return _closed(visit, notice, 503)
        identifier = french.digits_only(form.get("identifier", ""))
        code = french.digits_only(form.get("token", ""))
        if not _IDENTIFIER.fullmatch(identifier):
            return _ask_identifier(visit, identifier, "Votre numéro d'identification : 10 chiffres.")
        if not _CODE.fullmatch(code):
            return _ask_code(visit, identifier, "Le code reçu par SMS a 6 chiffres.")
        try:
            opened = await core.open_profile_session(identifier, code)
        except InvalidToken:
            return _ask_code(visit, identifier, "Ce code est incorrect ou a expiré.")
        visit.set_cookie(SESSION_COOKIE, opened.session, "/profile")
        return visit.redirect("/profile")

    async def save(visit: Visit) -> Reply:
        form = visit.form()
        notice = await visit.notice()
        if notice is not None:
            return _closed(visit, notice, 503)
        session = visit.cookie(SESSION_COOKIE)
        values = {name: form.get(name, "").strip() for name in NAMES}
        changes = {name: value for name, value in values.items() if value}
        if "birth_date" in changes:
            changes["birth_date"] = french.iso_date(changes["birth_date"])
        if session is None:
            return _ask_identifier(visit, info=_EXPIRED)
        try:
            profile = wire(await core.update_profile(session, changes))
        except SessionInvalid:
            visit.clear_cookie(SESSION_COOKIE, "/profile")
            return _ask_identifier(visit, info=_EXPIRED)
        except InvalidInput as exc:
            errors = french.problems(exc.extra["fields"])
            return _profile_page(visit, wire(await core.get_profile(session)), values, errors)
        return _profile_page(visit, profile, saved=True)

    async def leave(visit: Visit) -> Reply:
        visit.form()
        visit.clear_cookie(SESSION_COOKIE, "/profile")
        return visit.redirect("/profile")

    return [
        kit.route("GET", "/profile", show, "page: personal section"),
        kit.route("POST", "/profile", save, "page: personal data saved"),
        kit.route("POST", "/profile/code", send_code, "page: personal section code by SMS"),
        kit.route("POST", "/profile/session", open_session, "page: personal section opened"),
        kit.route("POST", "/profile/logout", leave, "page: personal section closed"),
    ]


_TITLE = "id-tronic : mon espace"


def _closed(visit: Visit, notice: str, code: int = 200) -> Reply:
    return visit.page(_TITLE, tag("h1", "Mon espace id-tronic"), notice=notice, status=code, here="/profile")


def _ask_identifier(
    visit: Visit, identifier: str = "", error: str | None = None, info: str | None = None
) -> Reply:
    form = visit.form_tag(
        "/profile/code",
        identifier_field(identifier, error, "challenge", "Les 10 chiffres reçus à l'inscription."),
        tag("button", "Recevoir un code par SMS", type="submit"),
        id="challenge-form",
    )
    body = (
        tag("h1", "Mon espace id-tronic"),
        alert(error) if error else None,
        status(info) if info else None,
        form,
    )
    return visit.page(
        ("Erreur : " if error else "") + _TITLE, *body, status=422 if error else 200, here="/profile"
    )


def _ask_code(visit: Visit, identifier: str, error: str | None = None) -> Reply:
    form = visit.form_tag(
        "/profile/session",
        tag("input", type="hidden", name="identifier", value=identifier),
        code_field(error, "session"),
        tag("button", "Ouvrir mon espace", type="submit"),
        id="session-form",
    )
    again = visit.form_tag(
        "/profile/code",
        tag("input", type="hidden", name="identifier", value=identifier),
        tag("button", "Renvoyer un code", type="submit", class_="secondary"),
        id="resend-form",
    )
    body = (
        tag("h1", "Mon espace id-tronic"),
        alert(error, id="session-error") if error else None,
        status("Si ce numéro est inscrit et actif, un code vient de partir par SMS vers votre mobile."),
        form,
        again,
        tag("p", tag("a", "Utiliser un autre numéro", href="/profile")),
    )
    return visit.page(
        ("Erreur : " if error else "") + _TITLE, *body, status=422 if error else 200, here="/profile"
    )


def _profile_page(
    visit: Visit,
    profile: dict[str, Any],
    values: dict[str, str] | None = None,
    errors: dict[str, str] | None = None,
    saved: bool = False,
) -> Reply:
    errors = errors or {}
    shown = {
        "last_name": profile["last_name"],
        "first_name": profile["first_name"],
        "birth_date": french.french_date(profile["birth_date"]),
        "mobile": profile["mobile"],
        **(values or {}),
    }
    pending = profile.get("mobile_pending")
    card = french.grouped_card(profile["card"]) if profile.get("card") else "pas encore vérifiée"
    form = visit.form_tag(
        "/profile",
        alert("Vérifiez les champs signalés.", id="profile-error") if errors else None,
        status("Modifications enregistrées.", id="profile-saved") if saved else None,
        *identity_fields(
            shown,
            errors,
            "profile",
            required=False,
            mobile_hint="Un nouveau numéro est vérifié par un appel : il ne sert qu'après.",
        ),
        tag("button", "Enregistrer", type="submit"),
        id="profile-form",
        novalidate=True,
    )
    body = (
        tag("h1", "Mon espace id-tronic"),
        tag("p", "Numéro d'identification : ", tag("strong", profile["identifier"])),
        tag("p", "Carte : ", tag("span", card, id="card")),
        tag(
            "p",
            f"Nouveau numéro {pending} : nous allons l'appeler. Décrochez et tapez les 8 derniers chiffres "
            "de votre carte, puis #. Rechargez cette page ensuite.",
            id="pending",
            class_="hint",
            role="status",
        )
        if pending
        else None,
        form,
        visit.form_tag(
            "/profile/logout", tag("button", "Fermer mon espace", type="submit", class_="secondary")
        ),
    )
    title = ("Erreur : " if errors else "") + _TITLE
    return visit.page(title, *body, status=422 if errors else 200, here="/profile")
