"""Rotation of data.key and hmac.key without downtime (docs/operations.md, Key rotation), on SQLite and
PostgreSQL: data written under key A keeps working once B is current with A as a previous key, `rekey`
moves everything to B, and after A is dropped everything still works."""

from __future__ import annotations

import base64
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import BlockingCore, FakeClock, make_rules, test_config
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from domain_helpers import FIRST8, LAST8, PAN, active_cardholder, answer_call, enroll, sent_tokens
from test_cli import run

from idtronic_tel.config import ConfigError, load_config, prepare_data_dir
from idtronic_tel.config_schema import Config, KeysConfig
from idtronic_tel.core import enrollment, merchants, payments, profile, rekey
from idtronic_tel.core.cards import luhn_check_digit
from idtronic_tel.core.crypto import DecryptionError, Vault
from idtronic_tel.core.models import Cardholder, Merchant, ProfileSession, SmsMessage

WAITING_FIRST8 = "51234567"
WAITING_LAST8 = "1234567" + luhn_check_digit(WAITING_FIRST8 + "1234567")


def keys() -> tuple[bytes, bytes]:
    return secrets.token_bytes(32), secrets.token_bytes(32)


def config_with(data: bytes, mac: bytes, previous: tuple[bytes, bytes] | None = None) -> Config:
    old = ((previous[0],), (previous[1],)) if previous else ((), ())
    return test_config(keys=KeysConfig(data, mac, *old))


def run_rekey(core: BlockingCore, check: bool) -> dict[str, Any]:
    """What the command does (cli._rekey), batch by batch."""
    counts: dict[str, dict[str, int]] = {}
    for column in rekey.COLUMNS:
        total = {"stale": 0, "written": 0, "unreadable": 0}
        after: int | None = 0
        while after is not None:
            batch = core(rekey.batch, column, after, check)
            for name in total:
                total[name] += getattr(batch, name)
            after = batch.after
        counts[column] = total
    return {"columns": counts, "merchants": core(merchants.not_rehashed)}


@pytest.fixture
def cores(db_url: str, clock: FakeClock) -> Iterator[list[BlockingCore]]:
    opened: list[BlockingCore] = []
    yield opened
    for core in opened:
        core.close()


def test_rotation_of_both_keys_keeps_everything_working(db_url, clock, cores):  # type: ignore[no-untyped-def]
    a, b = keys(), keys()

    def core_with(config: Config) -> BlockingCore:
        cores.append(BlockingCore(db_url, make_rules(config, clock)))
        return cores[-1]

    # ---- everything under key A: a merchant, an active cardholder with a session, a pending payment,
    # a cardholder waiting for its callback (first 8 digits encrypted), a merchant that stays idle
    under_a = core_with(config_with(*a))
    added = under_a(merchants.add, "Boutique", None)
    idle = under_a(merchants.add, "Dormante", None)
    shop = under_a(merchants.authenticate, added["api_key"])
    identifier = active_cardholder(under_a, clock)
    under_a(profile.request_challenge, identifier)
    [(_, code)] = sent_tokens(under_a)
    session = under_a(profile.open_session, identifier, code)["session"]
    body = {"amount": 4990, "currency": "EUR", "reference": "order-1", "identifier": identifier}
    payment = under_a(payments.create, shop, body, None, "digest")[1]
    waiting = enroll(under_a, card_first8=WAITING_FIRST8, mobile="06 22 33 44 55")

    # ---- B current, A previous: the daemons read and accept both
    under_b = core_with(config_with(*b, previous=a))
    assert under_b(merchants.authenticate, added["api_key"]) == shop  # and its digest moves to B
    row = under_b.raw(lambda s: s.get(Merchant, shop.id))
    assert row.digest_key_id == under_b.rules.vault.hmac_key_id
    assert under_b(profile.get, session)["card"].endswith(LAST8[-4:])  # session and card under A
    [(_, token)] = sent_tokens(under_b)  # the SMS queued under A
    assert under_b(payments.confirm, shop, payment["id"], token)["status"] == "validated"
    stale = run_rekey(under_b, check=True)["columns"]
    assert stale[rekey.CARDS]["stale"] == 1 and stale["sms_outbox.body_enc"]["stale"] >= 2
    assert stale["cardholders.first8_enc"]["stale"] == 1
    assert run_rekey(under_b, check=True)["merchants"] == [{"id": idle["id"], "name": "Dormante"}]

    # ---- rekey: everything under B, counts of what was written; a second run writes nothing
    done = run_rekey(under_b, check=False)
    assert all(c["written"] == c["stale"] and not c["unreadable"] for c in done["columns"].values())
    again = run_rekey(under_b, check=False)
    assert all(c["stale"] == 0 for c in again["columns"].values())
    under_b(merchants.rotate_key, idle["id"])  # the idle merchant: the operator hands it a new key
    check = run_rekey(under_b, check=True)
    assert all(c == {"stale": 0, "written": 0, "unreadable": 0} for c in check["columns"].values())
    assert check["merchants"] == []

    # ---- A dropped: everything still works under B alone
    only_b = core_with(config_with(*b))
    assert only_b(merchants.authenticate, added["api_key"]) == shop
    assert only_b(profile.get, session)["identifier"] == identifier
    digest = only_b.raw(lambda s: s.scalar(sa.select(ProfileSession.session_digest)))
    assert digest == only_b.rules.vault.digest("session", session)
    holder = only_b.raw(lambda s: s.scalar(sa.select(Cardholder).where(Cardholder.identifier == identifier)))
    assert only_b.rules.vault.decrypt("card", holder.card_enc) == PAN
    assert holder.card_fingerprint == only_b.rules.vault.digest("card", PAN)
    for blob in only_b.raw(lambda s: s.scalars(sa.select(SmsMessage.body_enc)).all()):
        only_b.rules.vault.decrypt("sms", blob)
    clock.advance(11)  # the callback of the enrollment begun under A: its first 8 digits were rekeyed
    assert answer_call(only_b, WAITING_LAST8) == "accepted"
    assert only_b(enrollment.status, waiting)["status"] == "active"
    # The first card enrolled again is refused at the first entry: its fingerprint was computed again.
    enroll(only_b, mobile="06 33 44 55 66", card_first8=FIRST8)
    clock.advance(11)
    assert answer_call(only_b, LAST8) == "failed"


def test_vault_reads_legacy_blobs_and_prefers_the_key_named_in_the_header() -> None:
    (old, old_mac), (new, new_mac) = keys(), keys()
    nonce = os.urandom(12)
    legacy = nonce + AESGCM(old).encrypt(nonce, b"4976123456789012", b"card")  # before key ids
    rotated = Vault(new, new_mac, [old], [old_mac])
    assert rotated.decrypt("card", legacy) == "4976123456789012"
    assert not rotated.is_current(legacy)
    fresh = rotated.encrypt("card", "x")
    assert rotated.is_current(fresh) and Vault(new, new_mac).decrypt("card", fresh) == "x"
    with pytest.raises(DecryptionError) as err:
        Vault(new, new_mac).decrypt("card", legacy)
    assert "keys.data_key_previous_files" in str(err.value) and old.hex() not in str(err.value)
    # Digests: one per configured key, the current first; no previous key, no extra digest.
    assert Vault(new, new_mac).digests("session", "s") == (Vault(new, new_mac).digest("session", "s"),)
    under_old = Vault(old, old_mac).digest("page-csrf", "browser")
    assert rotated.matches("page-csrf", "browser", under_old)
    assert not Vault(new, new_mac).matches("page-csrf", "browser", under_old)
    assert not rotated.matches("page-csrf", "browser", "é")  # any posted text: no TypeError


def _write_key(path: Path, key: bytes) -> str:
    path.write_text(base64.b64encode(key).decode() + "\n")
    path.chmod(0o600)
    return str(path)


def test_configuration_of_previous_keys(tmp_path: Path) -> None:
    a, b = keys(), keys()
    names = ("a.data", "a.mac", "b.data", "b.mac")
    files = {name: _write_key(tmp_path / name, key) for name, key in zip(names, (*a, *b), strict=True)}
    toml = tmp_path / "c.toml"
    toml.write_text(
        f'[keys]\ndata_key_file = "{files["b.data"]}"\nhmac_key_file = "{files["b.mac"]}"\n'
        f'data_key_previous_files = ["{files["a.data"]}"]\n'
    )
    env = {"IDTRONIC_KEYS_HMAC_KEY_PREVIOUS_FILES": files["a.mac"]}
    prepare_data_dir(tmp_path, toml, env)
    config = load_config(toml, tmp_path, env)
    assert (config.keys.data_key_previous, config.keys.hmac_key_previous) == ((a[0],), (a[1],))
    assert repr(a[0]) not in repr(config) and "data_key_previous=" not in repr(config)  # hidden
    env = {"IDTRONIC_KEYS_HMAC_KEY_PREVIOUS_FILES": files["b.mac"]}
    with pytest.raises(ConfigError, match=r"previous_files\[1\]: holds the same key as keys.hmac_key_file"):
        load_config(toml, tmp_path, env)


def test_rekey_command_on_sqlite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    assert run(capsys, data, "migrate")[0] == 0
    code, out, _ = run(capsys, data, "merchant", "add", "Boutique")
    added = json.loads(out)
    code, out, _ = run(
        capsys, data, "enroll", "--channel", "fax", "--last-name", "Martin", "--first-name", "Claire",
        "--birth-date", "1985-04-12", "--mobile", "06 11 22 33 44", "--card-first8", FIRST8,
    )  # fmt: skip
    assert code == 0
    # A new pair of keys; the old ones become previous keys.
    for name in ("data.key", "hmac.key"):
        (data / name).rename(data / (name + ".old"))
        _write_key(data / name, secrets.token_bytes(32))
    toml = tmp_path / "c.toml"
    toml.write_text(
        f'[keys]\ndata_key_previous_files = ["{data / "data.key.old"}"]\n'
        f'hmac_key_previous_files = ["{data / "hmac.key.old"}"]\n'
    )
    code, out, err = run(capsys, data, "--config", str(toml), "rekey", "--check")
    report = json.loads(out)
    assert code == 1 and "keep the previous keys" in err
    assert report["columns"]["cardholders.first8_enc"] == {"previous_key": 1, "unreadable": 0}
    assert report["merchants_not_rehashed"] == [{"id": added["id"], "name": "Boutique"}]
    code, out, _ = run(capsys, data, "--config", str(toml), "rekey")
    rewritten = json.loads(out)["columns"]["cardholders.first8_enc"]
    assert code == 0 and rewritten == {"rewritten": 1, "unreadable": 0}
    assert run(capsys, data, "--config", str(toml), "merchant", "rotate-key", added["id"])[0] == 0
    code, out, _ = run(capsys, data, "--config", str(toml), "rekey", "--check")
    assert code == 0 and json.loads(out)["remaining"] == 0
    code, out, _ = run(capsys, data, "rekey", "--check")  # the previous keys dropped
    assert code == 0 and json.loads(out)["remaining"] == 0
