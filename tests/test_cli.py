"""The operator's command line (docs/operator.md): commands, output, exit statuses 0 / 1 / 2.
`run` as a process: test_daemon_start.py."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from domain_helpers import FIRST8

from idtronic_tel.cli import main

ENV = {"PATH": os.environ.get("PATH", "")}


def run(
    capsys: pytest.CaptureFixture[str], data: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    code = main(["--data-dir", str(data), *args], environ={**ENV, **(env or {})})
    out, err = capsys.readouterr()
    return code, out, err


def test_first_start_creates_private_keys_and_refuses_an_empty_schema(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    code, _, err = run(capsys, data, "merchant", "list")
    assert code == 1 and "idtronic-tel migrate" in err  # the daemon and the tools name the fix
    for name in ("operator.key", "data.key", "hmac.key"):
        assert stat.S_IMODE((data / name).stat().st_mode) == 0o600
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    code, out, _ = run(capsys, data, "migrate")
    assert code == 0 and "revision" in out


def test_administration_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    assert run(capsys, data, "migrate")[0] == 0
    code, out, _ = run(capsys, data, "merchant", "add", "Boutique", "--domain", "boutique.example.fr")
    added = json.loads(out)
    assert code == 0 and added["api_key"].startswith("idt_live_")
    code, out, _ = run(capsys, data, "merchant", "list")
    assert added["api_key"] not in out and json.loads(out)[0]["id"] == added["id"]
    code, out, _ = run(capsys, data, "merchant", "rotate-key", added["id"])
    assert code == 0 and json.loads(out)["api_key"] != added["api_key"]
    code, out, _ = run(
        capsys,
        data,
        "enroll",
        "--channel",
        "fax",
        "--last-name",
        "Martin",
        "--first-name",
        "Claire",
        "--birth-date",
        "1985-04-12",
        "--mobile",
        "0611223344",
        "--card-first8",
        FIRST8,
    )
    identifier = json.loads(out)["identifier"]
    assert code == 0 and FIRST8 not in out
    assert run(capsys, data, "lock", identifier, "--reason", "fraud")[0] == 0
    assert json.loads(run(capsys, data, "unlock", identifier)[1]) == {
        "identifier": identifier,
        "locked": False,
    }
    assert run(capsys, data, "suspend", "--notice", "Maintenance")[0] == 0
    code, out, _ = run(capsys, data, "status")
    status = json.loads(out)
    assert code == 0 and status["suspended"] is True and status["notice"] == "Maintenance"
    assert status["queues"]["callbacks_waiting"] == 1 and status["links"].startswith("unknown")
    assert run(capsys, data, "resume")[0] == 0
    assert run(capsys, data, "merchant", "remove", added["id"])[0] == 0
    code, _, err = run(capsys, data, "merchant", "remove", added["id"])
    assert code == 1 and "no such merchant" in err
    code, _, err = run(capsys, data, "lock", "1234567897")
    assert code == 1 and "no enrollment" in err
    code, _, err = run(
        capsys,
        data,
        "enroll",
        "--channel",
        "phone",
        "--last-name",
        "M",
        "--first-name",
        "C",
        "--birth-date",
        "1985-04-12",
        "--mobile",
        "0145678900",
        "--card-first8",
        FIRST8,
    )
    assert code == 1 and "mobile" in err


def test_usage_and_configuration_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as usage:
        main(["merchant"], environ=ENV)
    assert usage.value.code == 2
    code, _, err = run(capsys, tmp_path / "d", "status", env={"IDTRONIC_TOKENS_LIFETIME": "5"})
    assert code == 2 and "tokens.lifetime" in err
    bad = tmp_path / "bad.toml"
    bad.write_text("[http]\nlisen = 'tcp:1'\n")
    code = main(["--config", str(bad), "--data-dir", str(tmp_path / "d"), "status"], environ=ENV)
    err = capsys.readouterr().err
    assert code == 2 and "listen" in err


def test_twistd_knows_the_plugin(tmp_path: Path) -> None:
    """The editable install puts the project root on sys.path: twistd finds twisted/plugins/ there."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDTRONIC_")}
    twistd = Path(sys.executable).parent / "twistd"
    listed = subprocess.run(
        [str(twistd), "--help"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert "idtronic" in listed.stdout


def test_backup_copies_the_sqlite_database_privately(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import sqlite3

    data = tmp_path / "data"
    assert run(capsys, data, "migrate")[0] == 0
    added = json.loads(run(capsys, data, "merchant", "add", "Boutique")[1])
    copy = tmp_path / "copy.db"
    code, out, _ = run(capsys, data, "backup", str(copy))
    assert code == 0 and json.loads(out)["backup"] == str(copy)
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    with sqlite3.connect(copy) as db:
        assert db.execute("select id from merchants").fetchall() == [(added["id"],)]
    code, _, err = run(capsys, data, "backup", str(copy))
    assert code == 2 and "exists" in err  # never overwrites
    env = {"IDTRONIC_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}
    code, _, err = run(capsys, data, "backup", str(tmp_path / "pg.db"), env=env)
    assert code == 2 and "pg_dump" in err
