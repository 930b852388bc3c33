"""Assembles the daemon: core (DB pool, housekeeping), HTTP API, FastAGI server, AMI dialer, SMPP
binds. The only module that knows every part; the parts only meet through the core. (Demo mode adds
the simulated peers around it: demo.py.)"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.logger import Logger

from . import endpoints
from .api.app import build_router
from .api.fastpath import FastFront
from .api.front import Front
from .api.metrics import MetricsResource
from .api.resource import ApiResource
from .api.routing import Route
from .config_schema import Config
from .core.crypto import Vault
from .core.db import DBPool, check_schema, is_empty, make_engine, migrate
from .core.facade import Core, CoreCallbackQueue, CoreIvrGateway, CoreSmsOutbox
from .core.rules import Rules, utcnow
from .core.settings import CoreSettings
from .ivr.agi_server import agi_endpoint, make_agi_factory
from .ivr.ami_client import AmiClient
from .ivr.dialer import CallbackDialer
from .linkwatch import SAMPLE_SECONDS, LinkWatch
from .listener import Listener
from .smpp.service import SmppService, makeSmppService
from .supervisor import LISTENER_FD, InheritedEndpoint, Role
from .workers import gone_from_this_host, worker_name

log = Logger()

HOUSEKEEPING_SECONDS = 15.0
MoreRoutes = Callable[["Daemon"], list[Route]]  # routes served besides the API and pages (the demo's)


def core_settings(config: Config) -> CoreSettings:
    """The core's share of the configuration."""
    return CoreSettings(
        enrollment=config.enrollment,
        tokens=config.tokens,
        budget=config.budget,
        profile=config.profile,
        callback=config.callback,
        voice_fallback=config.voice_fallback,
        call_deadline=config.ami.originate_timeout + config.ami.outcome_grace,
    )


def core_rules(config: Config, clock: Callable[[], dt.datetime] = utcnow) -> Rules:
    """The core's settings, keys and clock (the command line, tests and benchmarks build theirs here)."""
    keys = config.keys
    vault = Vault(keys.data_key, keys.hmac_key, keys.data_key_previous, keys.hmac_key_previous)
    return Rules(core_settings(config), vault, clock)


@dataclass
class Daemon:
    """The assembled parts, for health, the command line's `status` and tests."""

    service: MultiService
    core: Core
    pool: DBPool
    smpp: SmppService | None
    ami: AmiClient | None
    listeners: dict[str, Listener] = field(default_factory=dict)
    on_fatal: Callable[[str], None] | None = None  # make_service: stop the reactor
    failure: str | None = None  # the first fatal problem (a listener that cannot bind)

    def fatal(self, reason: str) -> None:
        if self.failure is None:
            self.failure = reason
            log.critical("{reason}", reason=reason)
            if self.on_fatal is not None:
                self.on_fatal(reason)

    def listener_states(self) -> dict[str, str]:
        return {name: listener.state for name, listener in self.listeners.items()}

    def links(self) -> dict[str, Any]:
        links: dict[str, Any] = {}
        links["ami"] = "not configured" if self.ami is None else ("up" if self.ami.ready else "down")
        if self.smpp is None:
            links["smpp"] = "not configured"
        else:
            links["smpp"] = {name: "bound" if up else "down" for name, up in self.smpp.health().items()}
        return links


def build(
    config: Config,
    reactor: Any = None,
    check: bool = True,
    on_fatal: Callable[[str], None] | None = None,
    more_routes: MoreRoutes | None = None,
    role: Role = Role(),
) -> Daemon:
    """Every service of the daemon, not started. A new SQLite database gets the schema; any other that
    is not at the newest revision raises SchemaOutOfDate. `more_routes`: the demo's pages. `role`: which
    worker process this is (supervisor.py); workers other than 0 serve HTTP and their share of the binds."""
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    # SQLite takes one writer at a time: more threads only queue in its busy handler, which sleeps and
    # stretches the tail latency (bench/RESULTS.md, HTTP API). PostgreSQL gets the configured pool.
    sqlite = config.database.url.startswith("sqlite")
    threads = 1 if sqlite else config.database.pool_threads
    engine = make_engine(config.database.url, pool_size=threads)
    if check and role.first:
        # The embedded default starts on an empty data directory. PostgreSQL, shared by several daemons,
        # is migrated by the operator (`idtronic-tel migrate`), never by whichever daemon starts first.
        if sqlite and is_empty(engine):
            log.info(
                "new database {url}: schema created at revision {revision}",
                url=config.database.url,
                revision=migrate(config.database.url),
            )
        check_schema(engine)
    pool = DBPool(reactor, engine, threads)
    core = Core(reactor, pool, core_rules(config))
    top = MultiService()
    worker = worker_name(role.name(config.smpp.worker))

    smpp = None
    binds = role.share(config.smpp.binds)
    if binds:  # a worker without a bind claims no SMS: the workers with one poll the outbox
        smpp_config = replace(config.smpp, binds=binds)
        smpp = makeSmppService(smpp_config, CoreSmsOutbox(core, gone_from_this_host), worker, reactor)
        core.sms_taker = smpp.worker
        smpp.setServiceParent(top)
    ami = None
    if config.ami.secret and role.first:
        ami = AmiClient(clientFromString(reactor, config.ami.endpoint), config.ami, clock=reactor)
        ami.setServiceParent(top)
        dialer = CallbackDialer(
            CoreCallbackQueue(core, gone_from_this_host),
            ami,
            config.ami,
            worker=worker,
            clock=reactor,
            poll_interval=config.callback.poll_interval,
        )
        dialer.setServiceParent(top)
    daemon = Daemon(top, core, pool, smpp, ami, on_fatal=on_fatal)

    if role.first:
        agi = make_agi_factory(
            reactor, config.agi, CoreIvrGateway(core), config.callback, config.voice_fallback
        )
        daemon.listeners["fastagi"] = Listener(
            "fastagi", "FastAGI", "agi", agi_endpoint(reactor, config.agi), agi, daemon.fatal
        )
    more = more_routes(daemon) if more_routes is not None else []
    watch = LinkWatch(reactor, ami, smpp)
    TimerService(SAMPLE_SECONDS, watch.sample).setServiceParent(top)
    router = build_router(
        core,
        daemon.links,
        daemon.listener_states,
        more,
        watch.details,
        config.api.operator_key,
        role.describe,
    )
    site = FastFront(ApiResource(core, router, config.http, config.api), config.http, reactor)
    http = (
        serverFromString(reactor, config.http.listen)
        if role.first
        else InheritedEndpoint(reactor, LISTENER_FD, config.http.listen)
    )
    daemon.listeners["http"] = Listener(
        "http", "HTTP API", _scheme(config.http.listen), http, site, daemon.fatal
    )
    if config.http.metrics_listen and role.first:
        metrics = serverFromString(reactor, config.http.metrics_listen)
        daemon.listeners["metrics"] = Listener(
            "metrics",
            "Metrics",
            _scheme(config.http.metrics_listen),
            metrics,
            Front(MetricsResource(), config.http, reactor),
            daemon.fatal,
        )
    for listener in daemon.listeners.values():
        listener.setServiceParent(top)
    if role.first:
        TimerService(HOUSEKEEPING_SECONDS, _housekeeping, core).setServiceParent(top)
    return daemon


def _scheme(endpoint: str) -> str:
    return "https" if endpoints.server(endpoint).tls else "http"


def _housekeeping(core: Core) -> None:
    d = core.housekeeping()
    d.addCallback(lambda done: log.info("housekeeping: {done}", done=done) if any(done.values()) else None)
    d.addErrback(lambda failure: log.failure("housekeeping failed", failure))


class DaemonService(MultiService):
    """The daemon as one service: starts the DB thread pool before the other services and stops it after
    them; `daemon.failure` says why it stopped, when it had to."""

    def __init__(self, daemon: Daemon) -> None:
        super().__init__()
        self.daemon = daemon

    def startService(self) -> None:
        self.daemon.pool.start()
        super().startService()

    def stopService(self) -> Any:
        d = super().stopService()
        if d is None:
            self.daemon.pool.stop()
            return None

        def stop_pool(result: Any) -> Any:
            self.daemon.pool.stop()
            return result

        return d.addBoth(stop_pool)


def make_service(
    config: Config, reactor: Any = None, more_routes: MoreRoutes | None = None, role: Role = Role()
) -> DaemonService:
    """The daemon as one service (for twistd and `idtronic-tel run`; `demo.make_service` wraps it with
    simulated peers and its pages); a fatal problem stops the reactor."""
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    daemon = build(
        config,
        reactor,
        on_fatal=lambda reason: reactor.callWhenRunning(reactor.stop),
        more_routes=more_routes,
        role=role,
    )
    root = DaemonService(daemon)
    for child in list(daemon.service):
        child.setServiceParent(root)
    return root
