"""GET /metrics: the Prometheus text, generated on a thread so that a scrape never holds the reactor.

Served without a key on its own listener (`http.metrics_listen`, loopback by default), and on the API
listener with the operator key (api/app.py)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.web import server
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource

log = Logger()


def scrape() -> Deferred[bytes]:
    """The exposition text of every metric, made on the reactor's thread pool (prometheus_client's
    metrics lock themselves)."""
    return deferToThread(generate_latest)


class MetricsResource(Resource):
    """The metrics listener's only page: `/metrics` (HEAD too); anything else is 404."""

    isLeaf = True

    def render_GET(self, request: IRequest) -> Any:
        if request.path != b"/metrics":
            request.setResponseCode(404)
            request.setHeader("content-type", "text/plain; charset=utf-8")
            return b"only /metrics here\n"
        d = scrape()
        d.addCallback(self._send, request)
        d.addErrback(self._failed, request)
        return server.NOT_DONE_YET

    def _send(self, text: bytes, request: Any) -> None:
        if request._disconnected:
            return
        request.setHeader("content-type", CONTENT_TYPE_LATEST)
        request.setHeader("cache-control", "no-store")
        request.setHeader("content-length", str(len(text)))
        request.write(text)
        request.finish()

    def _failed(self, failure: Any, request: Any) -> None:
        log.failure("generating the metrics failed", failure)
        if not request._disconnected:
            request.setResponseCode(500)
            request.finish()
