"""The operator's console (`/admin`), in French: a login with the operator key opens a session (an
HttpOnly cookie, path /admin, 15 minutes idle), then the state of the links and queues, the recent
activity (masked) and the audit log, and the operator's actions. Every action is the same core call as
the command line's and the admin API's, so it lands in the audit log the same way. The session lives in
this daemon's memory: behind a load balancer, each daemon asks for the key once."""

from __future__ import annotations

import hmac
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ..core.errors import InvalidInput, NotFound
from ..core.facade import Core
from ..core.views import wire
from . import admin_manage as manage
from . import admin_views as views
from . import french
from .identity import NAMES
from .routing import Reply, Route
from .web import Kit, Visit

COOKIE = "idt_admin"
IDLE_SECONDS = 15 * 60
_IDENTIFIER = re.compile(r"\d{10}")
LinkDetails = Callable[[], list[dict[str, Any]]]


class Sessions:
    """Console sessions: a random token per login, forgotten after IDLE_SECONDS without a request."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._seen: dict[str, float] = {}

    def open(self) -> str:
        now = self.clock()
        self._seen = {t: seen for t, seen in self._seen.items() if now - seen <= IDLE_SECONDS}
        token = secrets.token_urlsafe(32)
        self._seen[token] = now
        return token

    def check(self, token: str | None) -> bool:
        """Whether the session is open; a request keeps it open."""
        seen = self._seen.get(token or "")
        if seen is None or self.clock() - seen > IDLE_SECONDS:
            self._seen.pop(token or "", None)
            return False
        self._seen[token or ""] = self.clock()
        return True

    def close(self, token: str | None) -> None:
        self._seen.pop(token or "", None)


def routes(
    core: Core, details: LinkDetails, operator_key: str, sessions: Sessions | None = None
) -> list[Route]:
    """`operator_key`: what opens the console (api.operator_key; empty: the console stays closed)."""
    kit = Kit(core, views.NAV)
    sessions = sessions or Sessions()

    def guarded(handler: Callable[[Visit], Awaitable[Reply]]) -> Callable[[Visit], Awaitable[Reply]]:
        async def run(visit: Visit) -> Reply:
            token = visit.cookie(COOKIE)
            if visit.request.method == b"POST":
                visit.form()  # the CSRF check comes first, session or not
            if not sessions.check(token):
                if token is not None:
                    visit.clear_cookie(COOKIE, "/admin")
                expired = (
                    "Votre session a expiré : saisissez à nouveau la clé d'opérateur." if token else None
                )
                return views.login(visit, info=expired, status=401 if token else 200)
            return await handler(visit)

        return run

    async def login(visit: Visit) -> Reply:
        form = visit.form()
        given = form.get("key", "").strip().encode()
        if not operator_key or not hmac.compare_digest(given, operator_key.encode()):
            return views.login(visit, error="Clé d'opérateur incorrecte.", status=401)
        visit.set_cookie(COOKIE, sessions.open(), "/admin")
        return visit.redirect("/admin")

    async def logout(visit: Visit) -> Reply:
        visit.form()
        sessions.close(visit.cookie(COOKIE))
        visit.clear_cookie(COOKIE, "/admin")
        return visit.redirect("/admin")

    async def state(visit: Visit, message: str | None = None, error: str | None = None) -> Reply:
        suspended, notice = await core.suspension_state()
        counts = await core.counts()
        return views.state(visit, details(), counts, notice if suspended else None, message, error)

    async def show_state(visit: Visit) -> Reply:
        return await state(visit)

    async def suspend(visit: Visit) -> Reply:
        form = visit.form()
        notice = form.get("notice", "").strip()
        scope, target = _scope(form)
        if not notice or len(notice) > 1000:
            return await state(visit, error="Le texte de l'avis est obligatoire (1000 caractères au plus).")
        try:
            await core.suspend(notice, *target)
        except NotFound:
            return await state(visit, error=_NO_TARGET[scope])
        return await state(visit, message=f"Suspension enregistrée ({_SCOPE_LABEL[scope]}).")

    async def resume(visit: Visit) -> Reply:
        scope, target = _scope(visit.form())
        try:
            await core.resume(*target)
        except NotFound:
            return await state(visit, error=_NO_TARGET[scope])
        return await state(visit, message=f"Service repris ({_SCOPE_LABEL[scope]}).")

    async def activity(visit: Visit) -> Reply:
        return views.activity(visit, await core.activity(30))

    async def merchants(visit: Visit, **shown: Any) -> Reply:
        listing = [wire(merchant) for merchant in (await core.list_merchants()).merchants]
        return manage.merchants(visit, listing, **shown)

    async def show_merchants(visit: Visit) -> Reply:
        return await merchants(visit)

    async def add_merchant(visit: Visit) -> Reply:
        form = visit.form()
        name, domain = form.get("name", "").strip(), form.get("domain", "").strip() or None
        try:
            added = await core.add_merchant(name, domain)
        except InvalidInput as exc:
            fields = exc.extra.get("fields", {})
            return await merchants(visit, error="Vérifiez le nom et le domaine.", fields=fields)
        return await merchants(visit, new_key=wire(added))

    async def merchant_action(visit: Visit) -> Reply:
        form = visit.form()
        merchant_id, action = form.get("merchant", ""), form.get("action", "")
        try:
            if action == "rotate":
                return await merchants(visit, new_key=wire(await core.rotate_merchant_key(merchant_id)))
            if action == "remove":
                await core.remove_merchant(merchant_id)
                return await merchants(visit, message="Marchand supprimé : sa clé ne vaut plus.")
        except NotFound:
            pass
        return await merchants(visit, error="Ce marchand n'existe pas (ou plus).")

    async def cardholders(visit: Visit) -> Reply:
        return manage.cardholders(visit)

    async def lock(visit: Visit) -> Reply:
        form = visit.form()
        identifier = french.digits_only(form.get("identifier", ""))
        locking = form.get("action") == "lock"
        if not _IDENTIFIER.fullmatch(identifier):
            return manage.cardholders(visit, error="Le numéro d'identification a 10 chiffres.")
        try:
            await core.lock(identifier, locking, form.get("reason", "").strip()[:500])
        except NotFound:
            return manage.cardholders(visit, error="Aucun titulaire ne porte ce numéro.")
        done = "bloqué" if locking else "débloqué (son compteur d'erreurs repart à zéro)"
        return manage.cardholders(visit, message=f"Titulaire {french.masked_identifier(identifier)} {done}.")

    async def enroll(visit: Visit) -> Reply:
        form = visit.form()
        values = {name: form.get(name, "").strip() for name in NAMES}
        channel = form.get("channel", "")
        if channel not in ("phone", "fax"):
            return manage.cardholders(visit, values, {"channel": "Téléphone ou fax."})
        fields = {**values, "birth_date": french.iso_date(values["birth_date"])}
        fields["card_first8"] = french.digits_only(form.get("card_first8", ""))
        try:
            enrolled = await core.enroll(fields, channel, "operator")
        except InvalidInput as exc:
            return manage.cardholders(visit, values, french.problems(exc.extra["fields"]))
        return manage.cardholders(visit, enrolled=enrolled.identifier)

    return [
        kit.route("GET", "/admin", guarded(show_state), "console: state"),
        kit.route("POST", "/admin/login", login, "console: log in"),
        kit.route("POST", "/admin/logout", logout, "console: log out", limited=""),
        kit.route("POST", "/admin/suspension", guarded(suspend), "console: suspend", limited=""),
        kit.route("POST", "/admin/resume", guarded(resume), "console: resume", limited=""),
        kit.route("GET", "/admin/activite", guarded(activity), "console: activity and audit log"),
        kit.route("GET", "/admin/marchands", guarded(show_merchants), "console: merchants"),
        kit.route("POST", "/admin/marchands", guarded(add_merchant), "console: add a merchant", limited=""),
        kit.route(
            "POST",
            "/admin/marchands/action",
            guarded(merchant_action),
            "console: rotate or remove",
            limited="",
        ),
        kit.route("GET", "/admin/titulaires", guarded(cardholders), "console: cardholders"),
        kit.route("POST", "/admin/titulaires/verrou", guarded(lock), "console: lock or unlock", limited=""),
        kit.route(
            "POST", "/admin/titulaires", guarded(enroll), "console: phone or fax enrollment", limited=""
        ),
    ]


_SCOPE_LABEL = {"service": "tout le service", "merchant": "un marchand", "cardholder": "un titulaire"}
_NO_TARGET = {
    "service": "Le service n'a pas pu être modifié.",
    "merchant": "Aucun marchand ne porte cet identifiant.",
    "cardholder": "Aucun titulaire ne porte ce numéro d'identification.",
}


def _scope(form: dict[str, str]) -> tuple[str, tuple[str | None, str | None]]:
    """The form's scope and the core's (cardholder, merchant) arguments for it."""
    scope = form.get("scope", "service")
    target = french.digits_only(form.get("target", "")) if scope == "cardholder" else form.get("target", "")
    target = target.strip()
    if scope == "cardholder":
        return scope, (target, None)
    if scope == "merchant":
        return scope, (None, target)
    return "service", (None, None)
