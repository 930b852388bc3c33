"""Assembles the daemon: core (DB pool, housekeeping), HTTP API, FastAGI server, AMI dialer, SMPP
binds, and in demo mode the built-in SMSC simulator and Asterisk emulator. The only module that
knows every part; the parts only meet through the core."""

from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import dataclass
from typing import Any

from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.application.service import IService, MultiService
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.logger import Logger

from .api.app import build_router
from .api.resource import ApiResource, QuietSite
from .config_schema import Config
from .core.crypto import Vault
from .core.db import DBPool, check_schema, make_engine
from .core.facade import Core, CoreCallbackQueue, CoreIvrGateway, CoreSmsOutbox
from .core.rules import Rules
from .ivr.agi_server import make_agi_service
from .ivr.ami_client import AmiClient
from .ivr.dialer import CallbackDialer
from .smpp.service import SmppService, makeSmppService

log = Logger()

HOUSEKEEPING_SECONDS = 15.0


def worker_name(config: Config) -> str:
    """Names this daemon in the database's work claims. Several daemons may share one PostgreSQL; the
    name must also stay the same across restarts, so that a restarted daemon finds what it left on the
    wire (SMS in SENDING, originated calls). Host name plus HTTP port is both: two daemons cannot share
    a port on one host."""
    fields = config.http.listen.split(":")
    if fields[0] in ("tcp", "tcp6", "ssl") and len(fields) > 1 and fields[1].isdigit() and fields[1] != "0":
        return f"{socket.gethostname()}:{fields[1]}"
    digest = hashlib.sha256(str(config.data_dir).encode()).hexdigest()[:8]
    return f"{socket.gethostname()}:{digest}:{os.getpid() if fields[1:2] == ['0'] else ''}"


@dataclass
class Daemon:
    """The assembled parts, for the command line's `status` and for tests."""

    service: MultiService
    core: Core
    pool: DBPool
    smpp: SmppService | None
    ami: AmiClient | None

    def links(self) -> dict[str, Any]:
        links: dict[str, Any] = {}
        links["ami"] = "not configured" if self.ami is None else ("up" if self.ami.ready else "down")
        if self.smpp is None:
            links["smpp"] = "not configured"
        else:
            links["smpp"] = {name: "bound" if up else "down" for name, up in self.smpp.health().items()}
        return links


def build(config: Config, reactor: Any = None, check: bool = True) -> Daemon:
    """Every service of the daemon, not started. Raises SchemaOutOfDate on an old database."""
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    # SQLite takes one writer at a time: more threads only queue in its busy handler, which sleeps and
    # stretches the tail latency (bench/RESULTS.md, HTTP API). PostgreSQL gets the configured pool.
    threads = 1 if config.database.url.startswith("sqlite") else config.database.pool_threads
    engine = make_engine(config.database.url, pool_size=threads)
    if check:
        check_schema(engine)
    pool = DBPool(reactor, engine, threads)
    rules = Rules(config, Vault(config.keys.data_key, config.keys.hmac_key))
    core = Core(reactor, pool, rules)
    top = MultiService()
    worker = worker_name(config)

    smpp = None
    if config.smpp.binds:
        smpp = makeSmppService(config.smpp, CoreSmsOutbox(core), worker, reactor)
        smpp.setServiceParent(top)
    ami = None
    if config.ami.secret:
        ami = AmiClient(clientFromString(reactor, config.ami.endpoint), config.ami, clock=reactor)
        ami.setServiceParent(top)
        dialer = CallbackDialer(
            CoreCallbackQueue(core),
            ami,
            config.ami,
            worker=worker,
            clock=reactor,
            poll_interval=config.callback.poll_interval,
        )
        dialer.setServiceParent(top)
    agi = make_agi_service(reactor, config.agi, CoreIvrGateway(core), config.callback, config.voice_fallback)
    agi.setServiceParent(top)

    daemon = Daemon(top, core, pool, smpp, ami)
    router = build_router(core, daemon.links)
    site = QuietSite(ApiResource(core, router, config.http, config.api))
    http = StreamServerEndpointService(serverFromString(reactor, config.http.listen), site)
    http.setName("http")
    http.setServiceParent(top)
    TimerService(HOUSEKEEPING_SECONDS, _housekeeping, core).setServiceParent(top)
    return daemon


def _housekeeping(core: Core) -> None:
    d = core.housekeeping()
    d.addCallback(lambda done: log.info("housekeeping: {done}", done=done) if any(done.values()) else None)
    d.addErrback(lambda failure: log.failure("housekeeping failed", failure))


class _PoolService(MultiService):
    """Starts the DB thread pool before the other services and stops it after them."""

    def __init__(self, pool: DBPool) -> None:
        super().__init__()
        self._pool = pool

    def startService(self) -> None:
        self._pool.start()
        super().startService()

    def stopService(self) -> Any:
        d = super().stopService()
        if d is None:
            self._pool.stop()
            return None

        def stop_pool(result: Any) -> Any:
            self._pool.stop()
            return result

        return d.addBoth(stop_pool)


def make_service(config: Config, reactor: Any = None) -> IService:
    """The daemon as one service (for twistd and `idtronic-tel run`)."""
    if config.demo.enabled:
        from .demo import with_demo_peers

        config, peers = with_demo_peers(config, reactor)
    else:
        peers = None
    daemon = build(config, reactor)
    root = _PoolService(daemon.pool)
    if peers is not None:
        peers.service.setServiceParent(root)
    for child in list(daemon.service):
        child.setServiceParent(root)
    if peers is not None:
        from .demo import DemoScenario

        DemoScenario(daemon, peers, reactor).setServiceParent(root)
    return root
