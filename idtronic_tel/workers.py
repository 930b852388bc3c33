"""This daemon's name in the database's work claims (SMS claims, callback attempts).

`[smpp] worker` names it; by default `<host name>:<pid>`, so two live daemons never share a name. A
restarted daemon has a new pid, hence a new name: at start-up it takes over at once what the daemons of
this host whose process is gone left in flight (`gone_from_this_host`); the claims of other hosts' daemons
wait until their lease runs out. A configured name stays the same across restarts and finds its own
claims by name.
"""

from __future__ import annotations

import os
import socket

_PID_MAX = 1 << 22  # Linux's highest possible pid_max


def worker_name(configured: str) -> str:
    return configured or f"{socket.gethostname()}:{os.getpid()}"


def gone_from_this_host(name: str) -> bool:
    """Whether `name` is a default name of this host whose process no longer runs. Only a process that
    certainly does not exist counts: a pid in use (even by something else) or one we may not signal does
    not, and its claims are left to their lease."""
    host, _, pid = name.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or not 1 < int(pid) <= _PID_MAX:
        return False
    if int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except OSError:
        return False  # PermissionError: it exists, as another user
    return False
