"""The cardholder pages: enrollment and personal section. Static HTML and a small script that calls
the JSON API; the pages never see card digits beyond the first 8 typed into the enrollment form."""

from __future__ import annotations

from importlib import resources

from .routing import Call, Reply, Route

_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/profile": ("profile.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
}


def _load(name: str) -> bytes:
    return resources.files("idtronic_tel.api").joinpath("static", name).read_bytes()


def routes() -> list[Route]:
    result = []
    for path, (name, kind) in _FILES.items():
        content = _load(name)

        async def serve(call: Call, content: bytes = content, kind: str = kind) -> Reply:
            headers = {
                "content-security-policy": "default-src 'self'; frame-ancestors 'none'",
                "x-content-type-options": "nosniff",
                "referrer-policy": "no-referrer",
            }
            return Reply(200, content, headers, content_type=kind)

        result.append(Route("GET", path, serve, "public", f"page {name}", {200: "html"}))
    return result
