"""Key rotation, the database side (`idtronic-tel rekey`, docs/operations.md): every ciphertext written
again under the current data key, every card fingerprint computed again under the current hmac key.

Online: each batch is one short transaction of at most BATCH rows, and each row is written only if it
still holds what was read (compare-and-set), so a daemon that changed it meanwhile (a voice token wiped,
a first-8 dropped at activation) wins and nothing waits on a lock. Idempotent and resumable: a row
already under the current keys is skipped, so running it again picks up where it stopped. Merchant key
digests cannot be computed again without the keys: merchants.authenticate moves them one by one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import CursorResult, LargeBinary, Table, func, select, update
from sqlalchemy.orm import Session

from .crypto import HEADER_BYTES, DecryptionError
from .models import Cardholder, Challenge, SmsMessage
from .rules import Rules

BATCH = 200
CARDS = "cardholders.card"  # card_enc and card_fingerprint together
# The other encrypted columns: (table, column, the purpose bound to their ciphertexts).
_CIPHERTEXTS: dict[str, tuple[Table, str, str]] = {
    "cardholders.first8_enc": (cast(Table, Cardholder.__table__), "first8_enc", "card-first8"),
    "challenges.token_enc": (cast(Table, Challenge.__table__), "token_enc", "voice-token"),
    "sms_outbox.body_enc": (cast(Table, SmsMessage.__table__), "body_enc", "sms"),
}
COLUMNS = (CARDS, *_CIPHERTEXTS)


@dataclass(frozen=True)
class Batch:
    """One batch of one column: `stale` rows not under the current keys (written again unless checking),
    `written` the ones written, `unreadable` those no configured key opens; `after` the id to continue
    from, None when the column is done."""

    stale: int
    written: int
    unreadable: int
    after: int | None


def batch(s: Session, rules: Rules, column: str, after: int, check: bool) -> Batch:
    """The next batch of `column` past row id `after`; only counts when `check`."""
    if column == CARDS:
        return _cards(s, rules, after, check)
    table, name, purpose = _CIPHERTEXTS[column]
    col, row_id = table.c[name], table.c.id
    header = func.substr(col, 1, HEADER_BYTES, type_=LargeBinary)
    rows = s.execute(
        select(row_id, col)
        .where(row_id > after, col.is_not(None), header != rules.vault.header)
        .order_by(row_id)
        .limit(BATCH)
    ).all()
    written = unreadable = 0
    for found, blob in rows:
        try:
            plain = rules.vault.decrypt(purpose, blob)
        except DecryptionError:
            unreadable += 1
            continue
        if not check:
            new = rules.vault.encrypt(purpose, plain)
            written += _swap(s, table, found, {name: blob}, {name: new})
    return Batch(len(rows) - unreadable, written, unreadable, rows[-1][0] if len(rows) == BATCH else None)


def _cards(s: Session, rules: Rules, after: int, check: bool) -> Batch:
    """Cards: a fingerprint can only be told current by computing it, so every card is read."""
    rows = s.execute(
        select(Cardholder.id, Cardholder.card_enc, Cardholder.card_fingerprint)
        .where(Cardholder.id > after, Cardholder.card_enc.is_not(None))
        .order_by(Cardholder.id)
        .limit(BATCH)
    ).all()
    stale = written = unreadable = 0
    vault = rules.vault
    table = cast(Table, Cardholder.__table__)
    for found, blob, fingerprint in rows:
        assert blob is not None  # selected so
        try:
            pan = vault.decrypt("card", blob)
        except DecryptionError:
            unreadable += 1
            continue
        current = vault.digest("card", pan)
        if vault.is_current(blob) and fingerprint == current:
            continue
        stale += 1
        if not check:
            new = blob if vault.is_current(blob) else vault.encrypt("card", pan)
            new_values = {"card_enc": new, "card_fingerprint": current}
            written += _swap(s, table, found, {"card_enc": blob}, new_values)
    return Batch(stale, written, unreadable, rows[-1][0] if len(rows) == BATCH else None)


def _swap(s: Session, table: Table, row_id: int, old: dict[str, Any], new: dict[str, Any]) -> int:
    """Write `new` on the row if it still holds `old`; 1 if written."""
    same = [table.c[name] == value for name, value in old.items()]
    result = cast(CursorResult[Any], s.execute(update(table).where(table.c.id == row_id, *same).values(new)))
    return result.rowcount
