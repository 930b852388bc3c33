"""The daemon's worker name (workers.py): `[smpp] worker`, by default host name and pid; which names
belong to dead processes of this host (their claims are taken over at once, tests/test_domain.py). The
`[daemon] workers` setting, how binds are shared among worker processes, and worker 0's supervision of
the others (supervisor.py, on a Clock; tests/test_worker_processes.py runs real ones)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.error import ProcessTerminated
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from idtronic_tel.config import ConfigError, load_config, prepare_data_dir
from idtronic_tel.supervisor import (
    FIRST_DELAY,
    LISTENER_FD,
    MAX_DELAY,
    STABLE_AFTER,
    STOP_TIMEOUT,
    Role,
    Supervisor,
    worker_count,
)
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


# ---- several worker processes ([daemon] workers, supervisor.py) ---------------------------------------


def test_workers_setting_is_a_count_or_auto(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    prepare_data_dir(Path("idtronic-data"))
    path = tmp_path / "w.toml"

    def load(toml: str, **environ: str) -> int | str:
        path.write_text(toml)
        return load_config(path, None, environ).daemon.workers

    assert load("") == 1
    assert load("[daemon]\nworkers = 4") == 4
    assert load('[daemon]\nworkers = "auto"') == "auto"
    assert load("", IDTRONIC_DAEMON_WORKERS="auto") == "auto"
    assert load("", IDTRONIC_DAEMON_WORKERS="3") == 3
    for bad in ("0", "65", '"many"', "true", "1.5"):
        with pytest.raises(ConfigError, match=r"daemon\.workers = .*: must be"):
            load(f"[daemon]\nworkers = {bad}")
    assert worker_count("auto", "postgresql://db/idtronic") == (os.cpu_count() or 1)
    assert worker_count("auto", "sqlite:////var/lib/idtronic/idtronic.db") == 1  # one writer at a time
    assert worker_count(3, "sqlite:///x.db") == 3 and worker_count(3) == 3


def test_bind_k_goes_to_worker_k_mod_n_and_a_configured_name_stays_distinct() -> None:
    binds = ("a", "b", "c", "d", "e")
    assert [Role(i, 2).share(binds) for i in range(2)] == [("a", "c", "e"), ("b", "d")]
    assert [Role(i, 3).share(("a",)) for i in range(3)] == [("a",), (), ()]
    assert Role().share(binds) == binds
    assert [Role(i, 3).name("sms") for i in range(3)] == ["sms", "sms-w1", "sms-w2"]
    assert Role(2, 3).name("") == ""  # the default, host:pid, differs per process already
    assert Role(1, 2).describe() == {"index": 1, "pid": os.getpid(), "workers": 2}


class FakeProcess:
    def __init__(self, protocol: Any, pid: int) -> None:
        self.protocol = protocol
        self.pid: int | None = pid
        self.signals: list[int] = []

    def signalProcess(self, signum: int) -> None:
        self.signals.append(signum)

    def end(self) -> None:
        self.pid = None
        self.protocol.processEnded(Failure(ProcessTerminated(signal=9)))


class SpawningClock(Clock):
    """A Clock that records spawnProcess calls instead of starting anything."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[tuple[list[str], dict[int, Any], FakeProcess]] = []

    def spawnProcess(self, protocol: Any, executable: str, args: list[str], env: Any, childFDs: Any) -> Any:
        process = FakeProcess(protocol, 1000 + len(self.spawned))
        protocol.makeConnection(process)
        self.spawned.append((args, childFDs, process))
        return process


class FakeListener:
    class port:  # the listening port's one method the supervisor uses
        @staticmethod
        def fileno() -> int:
            return 7


def started(count: int) -> tuple[SpawningClock, Supervisor]:
    clock = SpawningClock()
    supervisor = Supervisor(clock, ["--config", "x.toml", "run"], count, FakeListener())
    supervisor.startService()
    return clock, supervisor


def test_worker_0_starts_the_others_on_the_listeners_socket() -> None:
    clock, supervisor = started(3)
    assert [args[-6:] for args, _, _ in clock.spawned] == [
        ["--worker-index", str(i), "--workers", "3", "--parent", str(os.getpid())] for i in (1, 2)
    ]
    args, fds, _ = clock.spawned[0]
    assert args[1:6] == ["-m", "idtronic_tel.cli", "--config", "x.toml", "run"]
    assert fds == {0: 0, 1: 1, 2: 2, LISTENER_FD: 7}
    assert supervisor.pids() == {1: 1000, 2: 1001}


def test_a_worker_that_dies_is_restarted_with_a_doubling_delay_reset_once_it_ran_a_while() -> None:
    clock, _ = started(2)
    delays = []
    for _ in range(7):
        clock.spawned[-1][2].end()
        before = len(clock.spawned)
        waited = 0.0
        while len(clock.spawned) == before:
            clock.advance(0.5)
            waited += 0.5
        delays.append(waited)
    assert delays == [1, 2, 4, 8, 16, 30, 30]
    clock.advance(STABLE_AFTER)  # it ran long enough: the next death is a first one again
    clock.spawned[-1][2].end()
    clock.advance(FIRST_DELAY)
    assert len(clock.spawned) == 9


def test_stopping_worker_0_terminates_the_workers_kills_the_stubborn_and_restarts_none() -> None:
    clock, supervisor = started(3)
    first, second = (process for _, _, process in clock.spawned)
    stopped = supervisor.stopService()
    assert first.signals == second.signals == [signal.SIGTERM]
    first.end()
    assert not stopped.called
    clock.advance(STOP_TIMEOUT)
    assert second.signals == [signal.SIGTERM, signal.SIGKILL]
    second.end()
    assert stopped.called
    clock.advance(MAX_DELAY)
    assert len(clock.spawned) == 2  # none restarted
