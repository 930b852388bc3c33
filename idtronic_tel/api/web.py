"""The pages' web kit: HTML built with escaping by default, the security headers of every page, cookies,
CSRF tokens and strict parsing of form posts.

Pages are rendered on the server and work without JavaScript; the few scripts are static files (never
inline: the Content-Security-Policy forbids inline script and style) that add live updates. Every form
posts `application/x-www-form-urlencoded` with a `csrf` field: an HMAC (the core's keyed hash) of the
browser's random `idt_browser` cookie, so only a page served to that browser can post. Every cookie is
HttpOnly and SameSite=Strict, and Secure when the page came over TLS."""

from __future__ import annotations

import re
import secrets
from collections.abc import Awaitable, Callable, Iterable
from typing import cast
from urllib.parse import parse_qsl

from twisted.logger import Logger
from twisted.web.iweb import IRequest

from ..core.errors import DomainError
from ..core.facade import Core
from .errors import ApiError, from_domain
from .routing import Call, Reply, Route

log = Logger()

HTML = "text/html; charset=utf-8"
_TRY_AGAIN = "Le service n'a pas pu traiter votre demande : réessayez dans un instant."
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
}
BROWSER_COOKIE = "idt_browser"
_COOKIE_VALUE = re.compile(r"[A-Za-z0-9_\-.]{16,200}")
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # tab and line breaks are text
_FORM = "application/x-www-form-urlencoded"
_VOID = frozenset({"input", "meta", "link", "br"})


class Html(str):
    """Markup: already escaped, inserted as is."""


def esc(value: object) -> Html:
    text = str(value)
    return Html(text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;"))


def join(*parts: object) -> Html:
    """Markup of the parts in order: text is escaped, Html kept, None skipped, iterables flattened."""
    out: list[str] = []
    for part in parts:
        if part is None or part is False:
            continue
        if isinstance(part, Html):
            out.append(part)
        elif isinstance(part, str | int):
            out.append(esc(part))
        else:
            out.append(join(*part))  # type: ignore[misc]
    return Html("".join(out))


def tag(element: str, /, *children: object, **attrs: object) -> Html:
    """`tag("p", "text", class_="hint", aria_live="polite")`: trailing `_` dropped, `_` becomes `-`;
    True gives a bare attribute, None and False none."""
    rendered = []
    for key, value in attrs.items():
        if value is None or value is False:
            continue
        key = key.rstrip("_").replace("_", "-")
        rendered.append(f" {key}" if value is True else f' {key}="{esc(value)}"')
    head = f"<{element}{''.join(rendered)}>"
    if element in _VOID:
        return Html(head)
    return Html(f"{head}{join(*children)}</{element}>")


def document(
    title: str,
    *body: object,
    nav: Iterable[tuple[str, str]] = (),
    notice: str | None = None,
    scripts: Iterable[str] = (),
    here: str = "",
) -> bytes:
    """A whole page: French, readable on a phone, the service notice on top while suspended."""
    links = [tag("a", label, href=href, aria_current="page" if href == here else None) for href, label in nav]
    head = join(
        Html('<meta charset="utf-8">'),
        Html('<meta name="viewport" content="width=device-width, initial-scale=1">'),
        tag("title", title),
        tag("link", rel="stylesheet", href="/static/style.css"),
        tag("script", src="/static/site.js", defer=True),
        [tag("script", src=src, defer=True) for src in scripts],
    )
    page = join(
        Html("<!doctype html>\n"),
        tag(
            "html",
            tag("head", head),
            tag(
                "body",
                tag("a", "Aller au contenu", href="#contenu", class_="skip"),
                tag("header", tag("nav", *links, aria_label="Pages")) if links else None,
                tag(
                    "main",
                    notice_box(notice) if notice is not None else None,
                    *body,
                    id="contenu",
                    tabindex="-1",
                ),
            ),
            lang="fr",
        ),
    )
    return page.encode()


def notice_box(text: str) -> Html:
    return tag(
        "div",
        tag("strong", "Service suspendu : "),
        text or "le service est momentanément suspendu.",
        id="notice",
        class_="notice",
        role="status",
    )


def alert(message: object, **attrs: object) -> Html:
    """An error announced to screen readers (role=alert, aria-live) and focused by site.js."""
    return tag("div", message, class_="error", role="alert", aria_live="assertive", tabindex="-1", **attrs)


def status(message: object, **attrs: object) -> Html:
    """Good news, announced politely."""
    return tag("p", message, class_="saved", role="status", aria_live="polite", **attrs)


def field(
    label: str,
    name: str,
    value: str = "",
    error: str | None = None,
    *,
    form: str,
    hint: str | None = None,
    kind: str = "input",
    options: Iterable[tuple[str, str]] = (),
    **attrs: object,
) -> Html:
    """A labelled control: the label tied to it, its hint and error named by aria-describedby."""
    ident = f"{form}-{name}"
    described = " ".join(
        part for part, present in ((f"{ident}-hint", hint), (f"{ident}-error", error)) if present
    )
    common: dict[str, object] = {
        "id": ident,
        "name": name,
        "aria_describedby": described or None,
        "aria_invalid": "true" if error else None,
    }
    if kind == "textarea":
        control = tag("textarea", value, **common, **attrs)
    elif kind == "select":
        choices = [tag("option", text, value=key, selected=key == value) for key, text in options]
        control = tag("select", choices, **common, **attrs)
    else:
        control = tag("input", **common, value=value or None, **attrs)
    return tag(
        "div",
        tag("label", label, for_=ident),
        tag("p", hint, id=f"{ident}-hint", class_="hint") if hint else None,
        control,
        tag("p", error, id=f"{ident}-error", class_="field-error", data_field=name) if error else None,
        class_="field",
    )


class Refused(Exception):
    """A post the pages will not act on (no or wrong CSRF token, malformed form)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


PageHandler = Callable[["Visit"], Awaitable[Reply]]


class Kit:
    """What every page shares: the core (its keyed hash for CSRF tokens, the service notice)."""

    def __init__(self, core: Core, nav: Iterable[tuple[str, str]] = ()) -> None:
        self.core = core
        self.nav = tuple(nav)

    def route(
        self,
        method: str,
        path: str,
        handler: PageHandler,
        summary: str,
        limited: str | None = None,
        nav: str = "",
    ) -> Route:
        """A page route. Posts count against the API's per-address limit (unless `limited` says
        otherwise), answered as a page. `nav`: its label when the other pages link to it."""

        async def run(call: Call) -> Reply:
            visit = Visit(call, self)
            try:
                return await handler(visit)
            except Refused as refused:
                return visit.page("Demande refusée", alert(refused.message), status=refused.status)
            except DomainError as exc:  # what the page did not expect (a page never shows a 500 for it)
                log.info("page {path}: {code}", path=path, code=exc.code)
                return visit.page("Erreur", alert(_TRY_AGAIN), status=from_domain(exc).status)

        return Route(
            method,
            path,
            run,
            "public",
            summary,
            {200: "html"},
            limited=("public" if method == "POST" else "") if limited is None else limited,
            error_page=self.error_page,
            nav=nav,
        )

    def error_page(self, error: ApiError) -> Reply:
        headers = dict(SECURITY_HEADERS)
        if error.code == "rate_limited":
            message = f"Trop de demandes depuis votre adresse : réessayez dans {error.retry_after} s."
        else:
            message = "Cette demande ne peut pas être traitée."
        if error.retry_after is not None:
            headers["retry-after"] = str(error.retry_after)
        body = document("Erreur", tag("h1", "Erreur"), alert(message), nav=self.nav)
        return Reply(error.status, body, headers, HTML)

    def token(self, browser: str) -> str:
        return self.core.rules.vault.digest("page-csrf", browser)


class Visit:
    """One page request: its cookies in and out, its CSRF token, its form."""

    def __init__(self, call: Call, kit: Kit) -> None:
        self.call = call
        self.kit = kit
        self.request = cast(IRequest, call.request)  # pages are served by Twisted's channel only
        self.cookies: list[str] = []
        self._form: dict[str, str] | None = None
        browser = self.cookie(BROWSER_COOKIE)
        if browser is None:
            browser = secrets.token_urlsafe(24)
            self.set_cookie(BROWSER_COOKIE, browser)
        self.browser = browser
        self.csrf = kit.token(browser)

    # -- cookies ---------------------------------------------------------------------------------------
    def cookie(self, name: str) -> str | None:
        raw = self.request.getCookie(name.encode())
        if raw is None:
            return None
        text = raw.decode("ascii", "replace")
        return text if _COOKIE_VALUE.fullmatch(text) else None

    def set_cookie(self, name: str, value: str, path: str = "/", max_age: int | None = None) -> None:
        parts = [f"{name}={value}", f"Path={path}", "HttpOnly", "SameSite=Strict"]
        if max_age is not None:
            parts.append(f"Max-Age={max_age}")
        if self.request.isSecure():
            parts.append("Secure")
        self.cookies.append("; ".join(parts))

    def clear_cookie(self, name: str, path: str = "/") -> None:
        self.set_cookie(name, "", path, max_age=0)

    # -- forms -----------------------------------------------------------------------------------------
    def form(self) -> dict[str, str]:
        """The posted fields (the last of repeated names wins); Refused unless well-formed and carrying
        this browser's CSRF token. Parsed once per request."""
        if self._form is not None:
            return self._form
        kind = (self.request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
        if kind != _FORM.encode():
            raise Refused(415, "Ce formulaire doit être envoyé depuis la page.")
        content = self.request.content
        raw = content.read() if content is not None else b""
        try:
            pairs = parse_qsl(raw.decode("ascii"), keep_blank_values=True, errors="strict", max_num_fields=50)
        except (UnicodeDecodeError, ValueError):
            raise Refused(400, "Le formulaire envoyé est illisible.") from None
        fields = dict(pairs)
        if any(_CONTROL.search(value) for value in fields.values()):
            raise Refused(400, "Le formulaire contient des caractères de contrôle.")
        # A page served before a key rotation still posts (the digest under a previous hmac.key).
        if not self.kit.core.rules.vault.matches("page-csrf", self.browser, fields.get("csrf", "")):
            raise Refused(
                403,
                "Cette page a expiré ou ne vient pas de ce site : rechargez-la et recommencez "
                "(votre navigateur doit accepter les cookies de ce site).",
            )
        self._form = fields
        return fields

    def form_tag(self, action: str, *children: object, **attrs: object) -> Html:
        return tag(
            "form",
            tag("input", type="hidden", name="csrf", value=self.csrf),
            *children,
            method="post",
            action=action,
            **attrs,
        )

    # -- answers ---------------------------------------------------------------------------------------
    async def notice(self) -> str | None:
        """The public notice while the whole service is suspended, else None."""
        suspended, text = await self.kit.core.suspension_state()
        return text if suspended else None

    def page(
        self,
        title: str,
        *body: object,
        status: int = 200,
        notice: str | None = None,
        scripts: Iterable[str] = (),
        here: str = "",
        nav: Iterable[tuple[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        content = document(
            title,
            *body,
            nav=self.kit.nav if nav is None else nav,
            notice=notice,
            scripts=scripts,
            here=here,
        )
        return Reply(status, content, {**SECURITY_HEADERS, **(headers or {})}, HTML, tuple(self.cookies))

    def redirect(self, location: str) -> Reply:
        """303 See Other: after a post, the browser asks for the page with a GET."""
        headers = {**SECURITY_HEADERS, "location": location}
        return Reply(303, b"", headers, HTML, tuple(self.cookies))


def static_routes(package: str, files: dict[str, tuple[str, str]]) -> list[Route]:
    """GET routes for files shipped in `package`'s static/ folder: path -> (file name, content type)."""
    from importlib import resources

    result = []
    for path, (name, kind) in files.items():
        content = resources.files(package).joinpath("static", name).read_bytes()

        async def serve(call: Call, content: bytes = content, kind: str = kind) -> Reply:
            return Reply(200, content, dict(SECURITY_HEADERS), content_type=kind)

        result.append(Route("GET", path, serve, "public", f"file {name}", {200: "file"}))
    return result
