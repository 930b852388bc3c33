"""The cardholder's enrollment pages: the form (`/`), then the result page that follows the callback to
its end (`/enrollment/{identifier}`: a call is coming, the phone rings, active or failed, and then
"rappelez-moi"). The pages call the same core operations as the JSON API; the first 8 card digits are
posted once and never written back into a page."""

from __future__ import annotations

import re

from ..core.errors import Conflict, InvalidInput, NotFound
from ..core.facade import Core
from ..core.views import wire
from . import admin_pages, french, profile_pages
from .identity import NAMES, card_first8_field, identity_fields
from .routing import Reply, Route
from .web import Kit, Visit, alert, static_routes, tag

NAV = (("/", "Inscription"), ("/profile", "Mon espace"))
_IDENTIFIER = re.compile(r"\d{10}")

# What the result page says in each state; site.js switches between them as the status changes.
STATUS = {
    "awaiting_callback": "nous allons vous appeler",
    "calling": "appel en cours",
    "active": "actif",
    "failed": "échec de la vérification",
}
HELP = {
    "awaiting_callback": (
        "Nous allons vous appeler sur votre mobile. Décrochez : une voix vous demandera les 8 derniers "
        "chiffres de votre carte, à taper sur le clavier du téléphone, suivis de la touche #."
    ),
    "calling": ("Votre téléphone sonne : décrochez et tapez les 8 derniers chiffres de votre carte, puis #."),
    "active": (
        "Votre inscription est confirmée. Pour payer chez un marchand, donnez votre numéro "
        "d'identification puis le code reçu par SMS."
    ),
    "failed": ("Nous n'avons pas pu vérifier votre carte. Demandez un nouvel appel quand vous êtes prêt."),
}


def routes(
    core: Core,
    link_details: admin_pages.LinkDetails = list,
    more_nav: tuple[tuple[str, str], ...] = (),
    operator_key: str = "",
) -> list[Route]:
    """`more_nav`: (path, label) of other pages to link to (the demo's shop and phone); `operator_key`:
    what opens the operator's console."""
    kit = Kit(core, (*more_nav, *NAV))

    async def form_page(visit: Visit) -> Reply:
        return _enroll_page(visit, await visit.notice(), {}, {})

    async def enroll(visit: Visit) -> Reply:
        form = visit.form()
        notice = await visit.notice()
        values = {name: form.get(name, "").strip() for name in NAMES}
        if notice is not None:
            return _enroll_page(visit, notice, values, {}, status=503)
        fields = {**values, "birth_date": french.iso_date(values["birth_date"])}
        fields["card_first8"] = french.digits_only(form.get("card_first8", ""))
        try:
            enrolled = await core.enroll(fields, "web", "cardholder")
        except InvalidInput as exc:
            return _enroll_page(visit, None, values, french.problems(exc.extra["fields"]), status=422)
        except Conflict:
            return _enroll_page(visit, None, values, {}, status=409, error=_TRY_AGAIN)
        return visit.redirect(f"/enrollment/{enrolled.identifier}")

    async def result(visit: Visit) -> Reply:
        identifier = visit.call.params["identifier"]
        notice = await visit.notice()
        try:
            state = await _status(core, identifier)
        except NotFound:
            return _unknown(visit, notice)
        return _result_page(visit, notice, state)

    async def call_me(visit: Visit) -> Reply:
        identifier = visit.call.params["identifier"]
        visit.form()
        notice = await visit.notice()
        try:
            state = await _status(core, identifier)
        except NotFound:
            return _unknown(visit, notice)
        if notice is not None:
            return _result_page(visit, notice, state, status=503)
        try:
            await core.request_callback(identifier)
        except Conflict as exc:
            locked = exc.extra.get("status") == "locked"
            message = _LOCKED if locked else "Un appel est déjà prévu : inutile d'en demander un autre."
            return _result_page(visit, None, state, error=message, status=409)
        return visit.redirect(f"/enrollment/{identifier}")

    return [
        kit.route("GET", "/", form_page, "page: enrollment"),
        kit.route("POST", "/", enroll, "page: enrollment form"),
        kit.route("GET", "/enrollment/{identifier}", result, "page: enrollment result"),
        kit.route("POST", "/enrollment/{identifier}/callback", call_me, "page: ask for a new call"),
        *profile_pages.routes(core, kit),
        *admin_pages.routes(core, link_details, operator_key),
        *static_routes(
            "idtronic_tel.api",
            {
                "/static/site.js": ("site.js", "text/javascript; charset=utf-8"),
                "/static/style.css": ("style.css", "text/css; charset=utf-8"),
            },
        ),
    ]


_TRY_AGAIN = "Le service n'a pas pu enregistrer votre demande : réessayez dans un instant."
_LOCKED = "Votre inscription est bloquée après trop d'erreurs : contactez votre banque."


async def _status(core: Core, identifier: str) -> dict[str, str | None]:
    if not _IDENTIFIER.fullmatch(identifier):
        raise NotFound("no such identifier")
    return wire(await core.enrollment_status(identifier))


def _enroll_page(
    visit: Visit,
    notice: str | None,
    values: dict[str, str],
    errors: dict[str, str],
    status: int = 200,
    error: str | None = None,
) -> Reply:
    intro = tag("p", "Payez en ligne sans jamais saisir votre numéro de carte.", class_="lead")
    if notice is not None:
        return visit.page(
            "id-tronic : inscription", tag("h1", "id-tronic"), intro, notice=notice, status=status, here="/"
        )
    if errors and "card_first8" not in errors:
        errors["card_first8"] = "Saisissez à nouveau les 8 premiers chiffres de votre carte."
    summary = error or (
        "Le formulaire contient des erreurs : vérifiez les champs signalés." if errors else None
    )
    form = visit.form_tag(
        "/",
        tag("h2", "Inscription"),
        alert(summary, id="enroll-error") if summary else None,
        *identity_fields(values, errors, "enroll"),
        card_first8_field(
            errors.get("card_first8"),
            "enroll",
            "Les 8 derniers vous seront demandés par téléphone : nous vous rappelons sur votre mobile.",
        ),
        tag("button", "S'inscrire", type="submit"),
        id="enroll-form",
        novalidate=True,
    )
    title = ("Erreur : " if summary else "") + "id-tronic : inscription"
    return visit.page(title, tag("h1", "id-tronic"), intro, form, status=status, here="/")


def _result_page(
    visit: Visit,
    notice: str | None,
    state: dict[str, str | None],
    error: str | None = None,
    status: int = 200,
) -> Reply:
    identifier = str(state["identifier"])
    current = str(state["status"])
    when = french.paris_time(state.get("next_call_at"))
    help_text = HELP.get(current, "")
    if current == "awaiting_callback" and when:
        help_text = f"Prochain appel vers {when}. " + help_text
    live = tag(
        "div",
        tag("p", "État : ", tag("strong", STATUS.get(current, current), id="enroll-status")),
        tag("p", help_text, id="enroll-help"),
        id="enroll-live",
        aria_live="polite",
        data_identifier=identifier,
        data_status=current,
        **{f"data_label_{key}": text for key, text in STATUS.items()},
        **{f"data_help_{key}": text for key, text in HELP.items()},
    )
    again = visit.form_tag(
        f"/enrollment/{identifier}/callback",
        tag("button", "Rappelez-moi", type="submit", id="new-callback"),
        id="callback-form",
        hidden=current != "failed" or notice is not None,
    )
    body = [
        tag("h1", "Inscription enregistrée"),
        alert(error) if error else None,
        tag(
            "p",
            "Votre numéro d'identification : ",
            tag("strong", identifier, id="identifier"),
        ),
        tag("p", "Notez-le : il vous sera demandé pour payer et pour ouvrir votre espace.", class_="hint"),
        live,
        again,
        tag("noscript", tag("p", "Rechargez cette page pour voir l'état à jour.", class_="hint")),
    ]
    return visit.page("id-tronic : votre inscription", *body, notice=notice, status=status)


def _unknown(visit: Visit, notice: str | None) -> Reply:
    return visit.page(
        "id-tronic : inscription inconnue",
        tag("h1", "Inscription inconnue"),
        alert("Aucune inscription ne porte ce numéro."),
        tag("p", tag("a", "Revenir à l'inscription", href="/")),
        notice=notice,
        status=404,
    )
