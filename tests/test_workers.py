"""The daemon's worker name (workers.py): `[smpp] worker`, by default host name and pid; which names
belong to dead processes of this host (their claims are taken over at once, tests/test_domain.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from idtronic_tel.workers import gone_from_this_host, worker_name

HOST = socket.gethostname()


def dead_pid() -> int:
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True
    )
    return int(proc.stdout)  # reaped by run(): no such process any more


def test_the_default_name_is_host_and_pid_and_a_configured_one_wins() -> None:
    assert worker_name("") == f"{HOST}:{os.getpid()}"
    assert worker_name("sms-1") == "sms-1"


def test_only_a_default_name_of_this_host_whose_process_is_gone_is_gone() -> None:
    assert gone_from_this_host(f"{HOST}:{dead_pid()}")
    assert not gone_from_this_host(f"{HOST}:{os.getpid()}")  # this process
    assert not gone_from_this_host(f"{HOST}:{os.getppid()}")  # alive
    assert not gone_from_this_host(f"other-{HOST}:{dead_pid()}")  # another host: its lease decides
    assert not gone_from_this_host(f"{HOST}:0")  # never signal a process group
    assert not gone_from_this_host(f"{HOST}:1")
    assert not gone_from_this_host(f"{HOST}:99999999999")
    assert not gone_from_this_host("sms-1")
    assert not gone_from_this_host(f"{HOST}:abc")
