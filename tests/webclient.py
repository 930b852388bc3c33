"""A small browser for page tests over HTTP: keeps cookies, posts forms with their CSRF token, follows
nothing by itself (each redirect is checked), and checks every page it gets for the security rules
every page keeps (headers, no inline script or style, a token in every form)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urlencode

import treq

CSP_NEEDED = ("default-src 'none'", "script-src 'self'", "style-src 'self'", "frame-ancestors 'none'")


class _Audit(HTMLParser):
    """What a page holds that the rules are about: forms (and their fields), inline code, lang."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict[str, Any]] = []
        self.inline: list[str] = []
        self.lang = ""
        self._in_script = False
        self.ids: list[str] = []
        self.labels_for: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids.append(str(a["id"]))
        if tag == "html":
            self.lang = a.get("lang") or ""
        if "style" in a or any(k.startswith("on") for k in a):
            self.inline.append(f"<{tag}> with {sorted(a)}")
        if tag == "style":
            self.inline.append("<style>")
        if tag == "script" and not a.get("src"):
            self.inline.append("<script> without src")
        if tag == "label" and a.get("for"):
            self.labels_for.append(str(a["for"]))
        if tag == "form":
            self.forms.append({"attrs": a, "fields": {}})
        if tag in ("input", "select", "textarea", "button") and self.forms and a.get("name"):
            self.forms[-1]["fields"][a["name"]] = a

    def handle_data(self, data: str) -> None:
        pass


@dataclass
class Page:
    status: int
    headers: Any
    text: str
    audit: _Audit = field(default_factory=_Audit)

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None

    @property
    def location(self) -> str:
        return self.header("location") or ""

    def csrf(self) -> str:
        found = re.search(r'name="csrf" value="([0-9a-f]{64})"', self.text)
        assert found, "no CSRF token in the page"
        return found.group(1)

    def form(self, form_id: str) -> dict[str, Any]:
        for form in self.audit.forms:
            if form["attrs"].get("id") == form_id:
                return form
        raise AssertionError(f"no form #{form_id} in the page")


class WebClient:
    def __init__(self, base: str) -> None:
        self.base = base
        self.cookies: dict[str, str] = {}
        self.set_cookies: list[str] = []  # every Set-Cookie header seen

    async def request(self, method: str, path: str, data: bytes | None = None, kind: str = "") -> Page:
        headers = {}
        if self.cookies:
            headers["cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if kind:
            headers["content-type"] = kind
        response = await treq.request(
            method,
            self.base + path,
            data=data,
            headers={k: [v] for k, v in headers.items()},
            allow_redirects=False,
            persistent=False,
        )
        text = (await response.content()).decode("utf-8")
        for raw in response.headers.getRawHeaders("set-cookie", []):
            self.set_cookies.append(raw)
            name, _, rest = raw.partition("=")
            value = rest.split(";")[0]
            if "Max-Age=0" in raw:
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value
        page = Page(response.code, response.headers, text)
        if text and (response.headers.getRawHeaders("content-type") or [""])[0].startswith("text/html"):
            page.audit.feed(text)
            check_page(page)
        return page

    async def get(self, path: str) -> Page:
        return await self.request("GET", path)

    async def post(self, path: str, fields: dict[str, str], csrf: str | None) -> Page:
        body = dict(fields)
        if csrf is not None:
            body["csrf"] = csrf
        return await self.request("POST", path, urlencode(body).encode(), "application/x-www-form-urlencoded")

    async def submit(self, page: Page, form_id: str, **fields: str) -> Page:
        """Post the form `form_id` of `page` to its action as a browser would: the inputs' values as
        served, replaced by `fields`."""
        form = page.form(form_id)
        values = {
            name: a.get("value") or ""
            for name, a in form["fields"].items()
            if name != "csrf" and a.get("type") not in ("submit", "checkbox", "radio")
        }
        values.update(fields)
        return await self.post(form["attrs"]["action"], values, form["fields"]["csrf"]["value"])


def check_page(page: Page) -> None:
    """The rules of every page: French, strict CSP, no framing, no inline code, CSRF in every form,
    every label tied to a field."""
    assert page.audit.lang == "fr", "the page is not lang=fr"
    csp = page.header("content-security-policy") or ""
    for needed in CSP_NEEDED:
        assert needed in csp, f"CSP lacks {needed}: {csp}"
    assert "unsafe-inline" not in csp
    assert page.header("x-frame-options") == "DENY"
    assert page.header("x-content-type-options") == "nosniff"
    assert page.audit.inline == [], page.audit.inline
    for form in page.audit.forms:
        assert form["attrs"].get("method") == "post", form
        token = form["fields"].get("csrf")
        assert token is not None and token.get("type") == "hidden", f"form without CSRF token: {form}"
    for target in page.audit.labels_for:
        assert target in page.audit.ids, f"label for a missing field #{target}"
