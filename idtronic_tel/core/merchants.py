"""Merchants registered by the operator. API keys are shown once and stored as HMAC digests."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from . import audit, views
from .crypto import public_id, random_key
from .errors import InvalidInput, NotFound
from .models import Merchant
from .rules import Rules

KEY_PREFIX = "idt_live_"
MAX_OVERLAP_SECONDS = 7 * 24 * 3600  # rotate-key: how long a replaced key may keep working
_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")


@dataclass(frozen=True)
class MerchantAuth:
    id: str
    name: str
    domain: str | None
    suspended: bool
    notice: str


def key_digest(rules: Rules, key: str) -> str:
    return rules.vault.digest("merchant-key", key)


def add(s: Session, rules: Rules, name: str, domain: str | None) -> views.MerchantKey:
    name = name.strip()
    problems: dict[str, str] = {}
    if not 1 <= len(name) <= 200:
        problems["name"] = "1 to 200 characters"
    if domain is not None:
        domain = domain.strip().lower()
        if not _DOMAIN.match(domain):
            problems["domain"] = "a DNS name such as shop.example.fr"
    if problems:
        raise InvalidInput(problems)
    key = random_key(KEY_PREFIX)
    merchant = Merchant(
        id=public_id("mch_"),
        name=name,
        domain=domain,
        key_digest=key_digest(rules, key),
        digest_key_id=rules.vault.hmac_key_id,
        key_hint=key[: len(KEY_PREFIX) + 4],
        created_at=rules.now(),
    )
    s.add(merchant)
    audit.record(s, rules, "operator", "merchant.add", f"merchant:{merchant.id}", name=name)
    return views.MerchantKey(merchant.id, name, domain, key)


def _active(s: Session, merchant_id: str) -> Merchant:
    merchant = s.get(Merchant, merchant_id)
    if merchant is None or not merchant.active:
        raise NotFound("no such merchant")
    return merchant


def rotate_key(s: Session, rules: Rules, merchant_id: str, overlap_seconds: int = 0) -> views.MerchantKey:
    """A new key. With `overlap_seconds`, the replaced key keeps working that long, so that the merchant
    can switch without a refused request; without, it stops at once (a leaked key). Only the key just
    replaced overlaps: rotating again ends an earlier overlap."""
    if not 0 <= overlap_seconds <= MAX_OVERLAP_SECONDS:
        raise InvalidInput({"overlap_seconds": f"0 to {MAX_OVERLAP_SECONDS} seconds"})
    merchant = _active(s, merchant_id)
    key = random_key(KEY_PREFIX)
    until = rules.now() + dt.timedelta(seconds=overlap_seconds) if overlap_seconds else None
    merchant.previous_key_digest = merchant.key_digest if until else None
    merchant.previous_key_until = until
    merchant.key_digest = key_digest(rules, key)
    merchant.digest_key_id = rules.vault.hmac_key_id
    merchant.key_hint = key[: len(KEY_PREFIX) + 4]
    subject = f"merchant:{merchant_id}"
    audit.record(s, rules, "operator", "merchant.rotate-key", subject, overlap_seconds=overlap_seconds)
    return views.MerchantKey(merchant_id, merchant.name, merchant.domain, key, until)


def remove(s: Session, rules: Rules, merchant_id: str) -> None:
    merchant = _active(s, merchant_id)
    merchant.active = False
    merchant.removed_at = rules.now()
    # The digest is replaced so the old key can never match again; payments keep their merchant id.
    merchant.key_digest = "removed:" + merchant_id
    merchant.previous_key_digest = merchant.previous_key_until = None
    audit.record(s, rules, "operator", "merchant.remove", f"merchant:{merchant_id}")


def listing(s: Session) -> views.MerchantList:
    rows = s.scalars(select(Merchant).where(Merchant.active).order_by(Merchant.created_at))
    return views.MerchantList(
        tuple(
            views.Merchant(m.id, m.name, m.domain, m.key_hint + "…", m.suspended, m.created_at) for m in rows
        )
    )


def authenticate(s: Session, rules: Rules, key: str) -> MerchantAuth | None:
    """The merchant of an API key whose digest is under the current or a previous hmac.key. A digest
    under a previous key (or of unknown key: written before key ids) is stored again under the current
    one: the key itself exists only here, so this is the only moment it can be (docs/operations.md)."""
    digests = rules.vault.digests("merchant-key", key)
    row = s.execute(
        select(
            Merchant.id,
            Merchant.name,
            Merchant.domain,
            Merchant.suspended,
            Merchant.notice,
            Merchant.active,
            Merchant.key_digest,
            Merchant.digest_key_id,
        ).where(
            or_(
                Merchant.key_digest.in_(digests),
                # The key a rotate-key replaced, during its overlap (never rehashed: it expires).
                and_(Merchant.previous_key_digest.in_(digests), Merchant.previous_key_until > rules.now()),
            )
        )
    ).first()
    if row is None or not row.active:
        return None
    if row.key_digest in digests and (row.key_digest, row.digest_key_id) != (
        digests[0],
        rules.vault.hmac_key_id,
    ):
        # Conditional: a concurrent rotate-key wins.
        s.execute(
            update(Merchant)
            .where(Merchant.id == row.id, Merchant.key_digest == row.key_digest)
            .values(key_digest=digests[0], digest_key_id=rules.vault.hmac_key_id)
        )
        if row.key_digest != digests[0]:
            audit.record(s, rules, "system", "merchant.key-rehashed", f"merchant:{row.id}")
    return MerchantAuth(row.id, row.name, row.domain, row.suspended, row.notice)


def not_rehashed(s: Session, rules: Rules) -> list[dict[str, str]]:
    """Active merchants whose key digest is not known to be under the current hmac.key: they have not
    authenticated since it became current (`idtronic-tel rekey --check`)."""
    rows = s.execute(
        select(Merchant.id, Merchant.name)
        .where(
            Merchant.active,
            (Merchant.digest_key_id != rules.vault.hmac_key_id) | Merchant.digest_key_id.is_(None),
        )
        .order_by(Merchant.created_at)
    )
    return [{"id": row.id, "name": row.name} for row in rows]
