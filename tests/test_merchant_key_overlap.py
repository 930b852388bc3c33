"""A merchant's API key replaced with an overlap: both keys work until the overlap ends, then only the
new one; without an overlap the old key stops at once (docs/operations.md, Key rotation). SQLite and
PostgreSQL; the operator route and the command."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from apiharness import OPERATOR_KEY, ApiHarness, api_config
from conftest import FakeClock, test_config
from test_cli import run
from twisted.internet.defer import Deferred

from idtronic_tel.core import merchants
from idtronic_tel.core.errors import InvalidInput


@pytest.fixture
def harness(sqlite_url: str) -> Iterator[ApiHarness]:
    h = ApiHarness(sqlite_url, api_config(test_config()))
    yield h
    pytest_twisted.blockon(Deferred.fromCoroutine(h.stop()))


def who(core: Any, key: str) -> str | None:
    auth = core.raw(merchants.authenticate, core.rules, key)
    return None if auth is None else auth.id


def test_the_replaced_key_works_until_the_overlap_ends(core, clock: FakeClock) -> None:  # type: ignore[no-untyped-def]
    added = core(merchants.add, "Boutique", None)
    other = core(merchants.add, "Voisine", None)
    rotated = core(merchants.rotate_key, added["id"], 3600)
    assert rotated["previous_key_valid_until"] == "2026-11-24T10:00:00+00:00"
    assert who(core, added["api_key"]) == who(core, rotated["api_key"]) == added["id"]
    assert who(core, other["api_key"]) == other["id"]  # the others are not touched
    clock.advance(3599)
    assert who(core, added["api_key"]) == added["id"]
    clock.advance(1)
    assert who(core, added["api_key"]) is None
    assert who(core, rotated["api_key"]) == added["id"]


def test_rotating_again_ends_the_earlier_overlap_and_no_overlap_stops_the_key_at_once(core) -> None:  # type: ignore[no-untyped-def]
    added = core(merchants.add, "Boutique", None)
    first = core(merchants.rotate_key, added["id"], 3600)
    second = core(merchants.rotate_key, added["id"], 3600)
    assert who(core, added["api_key"]) is None  # only the key just replaced overlaps
    assert who(core, first["api_key"]) == who(core, second["api_key"]) == added["id"]
    third = core(merchants.rotate_key, added["id"])
    assert "previous_key_valid_until" not in third
    assert who(core, second["api_key"]) is None and who(core, first["api_key"]) is None
    assert who(core, third["api_key"]) == added["id"]


def test_a_removed_merchant_keeps_no_overlapping_key_and_bad_overlaps_are_refused(core) -> None:  # type: ignore[no-untyped-def]
    added = core(merchants.add, "Boutique", None)
    for bad in (-1, merchants.MAX_OVERLAP_SECONDS + 1):
        with pytest.raises(InvalidInput):
            core(merchants.rotate_key, added["id"], bad)
    rotated = core(merchants.rotate_key, added["id"], merchants.MAX_OVERLAP_SECONDS)
    core(merchants.remove, added["id"])
    assert who(core, added["api_key"]) is None and who(core, rotated["api_key"]) is None


@pytest_twisted.ensureDeferred
async def test_the_operator_route_takes_an_overlap(harness: ApiHarness) -> None:
    h = harness
    merchant_id, key = await h.merchant("Boutique")
    path = f"/v1/admin/merchants/{merchant_id}/rotate-key"
    rotated = await h.call("POST", path, {"overlap_seconds": 600}, OPERATOR_KEY)
    assert rotated.status == 200 and "previous_key_valid_until" in rotated.body
    h.core._forget()
    assert (await h.call("GET", "/v1/payments/x", key=key)).status == 404  # still a merchant's key
    assert (await h.call("GET", "/v1/payments/x", key=rotated.body["api_key"])).status == 404
    for bad, status in (
        ({"overlap_seconds": 604801}, 422),
        ({"overlap_seconds": "1h"}, 422),
        ({"x": 1}, 400),
    ):
        assert (await h.call("POST", path, bad, OPERATOR_KEY)).status == status
    plain = await h.call("POST", path, None, OPERATOR_KEY)  # no body: as before, the old key stops now
    assert plain.status == 200 and "previous_key_valid_until" not in plain.body
    h.core._forget()
    assert (await h.call("GET", "/v1/payments/x", key=rotated.body["api_key"])).status == 401


def test_the_command_takes_an_overlap(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "data"
    assert run(capsys, data, "migrate")[0] == 0
    code, out, _ = run(capsys, data, "merchant", "add", "Boutique")
    added = json.loads(out)
    code, out, _ = run(capsys, data, "merchant", "rotate-key", added["id"], "--overlap", "86400")
    rotated = json.loads(out)
    assert code == 0 and rotated["api_key"] != added["api_key"] and "previous_key_valid_until" in rotated
    with pytest.raises(SystemExit) as usage:  # argparse's usage error
        run(capsys, data, "merchant", "rotate-key", added["id"], "--overlap", "-5")
    assert usage.value.code == 2 and "--overlap" in capsys.readouterr().err
