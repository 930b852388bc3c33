"""The demo shop's words for a refused code: an expired code is told from a wrong one (the API gives
`invalid_token` for both; the payment's `expires_at` tells them apart)."""

from __future__ import annotations

import datetime as dt

from idtronic_tel.demo_pages.shop import wrong_code


def test_the_shop_tells_an_expired_code_from_a_wrong_one() -> None:
    now = dt.datetime(2026, 11, 28, 10, 0, tzinfo=dt.UTC)
    pending = {"expires_at": (now + dt.timedelta(minutes=4)).isoformat()}
    past = {"expires_at": (now - dt.timedelta(seconds=1)).isoformat()}
    assert wrong_code({"attempts_remaining": 2}, pending, now) == "Code incorrect. Il vous reste 2 essais."
    assert wrong_code({"attempts_remaining": 1}, pending, now) == "Code incorrect. Il vous reste 1 essai."
    assert "a expiré" in wrong_code({"attempts_remaining": 2}, past, now)
    assert "Renvoyer le code" in wrong_code({"attempts_remaining": 2}, past, now)
