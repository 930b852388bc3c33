"""`idtronic-tel run` as a separate process, as an operator starts it: the embedded default on an empty
data directory, the lines it prints once listening, a port already taken, an older schema, --version."""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command

from idtronic_tel import __version__
from idtronic_tel.core.db import alembic_config, migrate

IDTRONIC_TEL = str(Path(sys.executable).parent / "idtronic-tel")


def environment(data: Path, **settings: str) -> dict[str, str]:
    """The process environment without the caller's IDTRONIC_* settings, plus these."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDTRONIC_")}
    return {**env, "IDTRONIC_DATA_DIR": str(data), **settings}


def texts_until(process: subprocess.Popen[bytes], done: Callable[[list[str]], bool]) -> list[str]:
    """The log texts the daemon prints (JSON lines: stdout is not a terminal) until `done` says so.
    Read straight from the pipe (no buffered reader that could hold lines select() does not see); the
    60 s bound only keeps a broken daemon from hanging the suite."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    texts: list[str] = []
    pending = b""
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while not done(texts):
            assert selector.select(timeout=60), f"the daemon went quiet after {texts}"
            chunk = os.read(fd, 65536)
            assert chunk, f"the daemon exited ({process.wait()}) after {texts}"
            *lines, pending = (pending + chunk).split(b"\n")
            texts += [json.loads(line)["text"] for line in lines]
    return texts


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(*args: str, **settings: str) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            [IDTRONIC_TEL, *args, "run"],
            env=environment(tmp_path / "data", **settings),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def test_run_on_an_empty_data_directory_creates_the_schema_and_says_where_it_listens(
    tmp_path: Path, daemon: Callable[..., subprocess.Popen[bytes]]
) -> None:
    process = daemon(
        IDTRONIC_HTTP_LISTEN="tcp:0:interface=127.0.0.1",
        IDTRONIC_AGI_LISTEN="tcp:0:interface=127.0.0.1",
        IDTRONIC_HTTP_METRICS_LISTEN="tcp:0:interface=127.0.0.1",
    )
    texts = texts_until(process, lambda t: sum(" on " in x and "://" in x for x in t) == 3)
    assert "schema created at revision" in texts[0]
    http = next(t for t in texts if t.startswith("HTTP API on http://127.0.0.1:")).split(" on ")[1]
    assert any(t.startswith("FastAGI on agi://127.0.0.1:") for t in texts)
    assert not [t for t in texts if "factory" in t.lower()]  # Twisted's per-factory lines stay hidden
    status, health = get(http + "/healthz")
    assert status == 200 and health["status"] == "ok"
    assert health["listeners"] == {"fastagi": "up", "http": "up", "metrics": "up"}
    metrics = next(t for t in texts if t.startswith("Metrics on http://127.0.0.1:")).split(" on ")[1]
    with urllib.request.urlopen(metrics + "/metrics", timeout=10) as answer:  # no key on its own listener
        assert answer.status == 200 and b"idtronic_http_requests_total" in answer.read()
    assert health["links"] == {"ami": "not configured", "smpp": "not configured"}
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    assert (tmp_path / "data" / "idtronic.db").exists()


def test_a_port_already_taken_stops_the_daemon_with_one_line_naming_it_and_its_holder(
    daemon: Callable[..., subprocess.Popen[bytes]],
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = daemon(
            IDTRONIC_HTTP_LISTEN="tcp:0:interface=127.0.0.1",
            IDTRONIC_AGI_LISTEN=f"tcp:{port}:interface=127.0.0.1",
            IDTRONIC_HTTP_METRICS_LISTEN="tcp:0:interface=127.0.0.1",
        )
        assert process.wait(timeout=60) == 1
    assert process.stderr is not None
    (line,) = process.stderr.read().decode().splitlines()
    assert line.startswith(f"idtronic-tel: FastAGI cannot listen on 127.0.0.1:{port}: ")
    assert f"held by pid {os.getpid()} (" in line  # this test process holds it


def test_run_refuses_an_older_schema_and_names_the_fix(
    tmp_path: Path, daemon: Callable[..., subprocess.Popen[bytes]]
) -> None:
    url = f"sqlite:///{tmp_path / 'data' / 'idtronic.db'}"
    (tmp_path / "data").mkdir()
    migrate(url)
    command.downgrade(alembic_config(url), "base")  # a database from before the first revision
    process = daemon(IDTRONIC_HTTP_LISTEN="tcp:0:interface=127.0.0.1")
    assert process.wait(timeout=60) == 1
    assert process.stderr is not None
    assert "run `idtronic-tel migrate`" in process.stderr.read().decode()


def test_version() -> None:
    done = subprocess.run([IDTRONIC_TEL, "--version"], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, f"idtronic-tel {__version__}\n")
