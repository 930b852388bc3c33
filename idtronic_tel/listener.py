"""A server endpoint the daemon must hold (the HTTP API, FastAGI).

Once listening it says where, in one line (`HTTP API on http://127.0.0.1:8080`). When it cannot bind, it
hands a one-line reason to `on_failure` (the port, and what holds it when the system tells), and the
daemon stops: a daemon that half-started would look healthy while Asterisk or merchants cannot reach it.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()


class Listener(Service):
    def __init__(
        self,
        name: str,
        label: str,
        scheme: str,
        endpoint: IStreamServerEndpoint,
        factory: IProtocolFactory,
        on_failure: Callable[[str], None],
    ) -> None:
        self.setName(name)
        self.label = label  # "HTTP API", "FastAGI"
        self.scheme = scheme  # "http", "https", "agi": the URL in the log line
        self.endpoint = endpoint
        self.factory = factory
        self.on_failure = on_failure
        self.port: IListeningPort | None = None
        self.url = ""
        self._listening: Deferred[Any] | None = None

    @property
    def state(self) -> str:
        """For /healthz: "up" while listening, "down" otherwise."""
        return "up" if self.port is not None else "down"

    def startService(self) -> None:
        super().startService()
        self._listening = self.endpoint.listen(self.factory)
        self._listening.addCallbacks(self._up, self._failed)

    def _up(self, port: IListeningPort) -> None:
        self.port = port
        self.url = address_url(self.scheme, port.getHost())
        log.info("{label} on {url}", label=self.label, url=self.url)

    def _failed(self, failure: Failure) -> None:
        assert failure.value is not None
        self.on_failure(f"{self.label} cannot listen {describe(failure.value)}")

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        port, self.port = self.port, None
        if port is not None:
            stopped: Deferred[None] | None = port.stopListening()
            return stopped
        if self._listening is not None:
            self._listening.cancel()
        return None


def address_url(scheme: str, address: Any) -> str:
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    if host is None or port is None:  # a UNIX socket
        return f"{scheme}+unix://{getattr(address, 'name', address)}"
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"


def describe(error: BaseException) -> str:
    """One line: where, why, and who holds the port when it is taken and the system tells."""
    if not isinstance(error, CannotListenError):
        return f"({' '.join(str(error).split()) or type(error).__name__})"
    cause = error.socketError
    why = getattr(cause, "strerror", None) or str(cause)
    if getattr(cause, "errno", None) == errno.EADDRINUSE:
        holder = port_holder(int(error.port))
        if holder:
            why += f", held by {holder}"
    return f"on {error.interface or '*'}:{error.port}: {why}"


def port_holder(port: int, proc: Path = Path("/proc")) -> str | None:
    """The process listening on a TCP port, as "pid N (command)", from Linux's /proc; None when unknown
    (another system, or a process of another user whose file descriptors we may not read)."""
    inodes = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (proc / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(f"socket:[{inode}]")
    if not inodes:
        return None
    for pid in (p for p in os.listdir(proc) if p.isdigit()):
        try:
            fds = os.listdir(proc / pid / "fd")
            if any(os.readlink(proc / pid / "fd" / fd) in inodes for fd in fds):
                command = (proc / pid / "cmdline").read_bytes().decode(errors="replace")
                return f"pid {pid} ({' '.join(command.replace(chr(0), ' ').split())[:100]})"
        except OSError:
            continue
    return None
