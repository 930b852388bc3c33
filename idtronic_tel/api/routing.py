"""Routes as data: method, path template, authentication, body schema and documented responses.
The same table drives dispatch and the OpenAPI document, so the two cannot drift apart."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol

from twisted.internet.interfaces import IAddress

from ..core.merchants import MerchantAuth
from .bodies import BodySchema
from .errors import ApiError


class Incoming(Protocol):
    """What the API reads of a request: Twisted's Request (IRequest), or the merchant fast path's
    (api/fastpath.py); the pages, served by Twisted only, read more of IRequest (api/web.py)."""

    method: bytes
    path: bytes
    args: Any  # the query string's, as Twisted's Request parses it (IRequest leaves it untyped)
    content: BinaryIO | None

    def getHeader(self, key: bytes) -> bytes | None: ...

    def getClientAddress(self) -> IAddress: ...


@dataclass
class Call:
    """One request as the handlers see it."""

    request: Incoming
    params: dict[str, str]
    body: dict[str, Any]
    client: str
    merchant: MerchantAuth | None = None
    session: str | None = None
    idempotency_key: str | None = None


@dataclass
class Reply:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json; charset=utf-8"
    cookies: tuple[str, ...] = ()  # Set-Cookie values (the pages' cookies)


Handler = Callable[[Call], Awaitable[Reply]]


@dataclass(frozen=True)
class Route:
    method: str
    template: str
    handler: Handler
    auth: str  # "merchant" | "operator" | "session" | "public" | "none"
    summary: str
    responses: dict[int, str]  # status -> component schema name ("" for no body)
    body: BodySchema | None = None
    limited: str = ""  # "public" | "identifier" | "": which API rate limit applies besides auth's
    suspendable: bool = False  # answers 503 while the service is suspended
    # The pages answer the API's own refusals (429 from `limited`) as a page, not as JSON.
    error_page: Callable[[ApiError], Reply] | None = None
    nav: str = ""  # a page that every page links to: its label in the navigation (the demo's pages)

    @property
    def pattern(self) -> re.Pattern[str]:
        return re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", self.template) + "$")


class Router:
    def __init__(self, routes: list[Route]) -> None:
        self.routes = routes
        self._compiled = [(route, route.pattern) for route in routes]

    def match(self, method: str, path: str) -> tuple[Route | None, dict[str, str], list[str]]:
        """(route, path parameters, allowed methods for this path)."""
        allowed: list[str] = []
        for route, pattern in self._compiled:
            found = pattern.match(path)
            if found is None:
                continue
            if route.method == method:
                return route, found.groupdict(), []
            allowed.append(route.method)
        return None, {}, allowed
