"""Secrets at rest: keyed hashes for tokens, keys and card fingerprints; AES-256-GCM for card digits and
queued SMS texts. Nothing here logs; nothing here returns a secret inside an exception message."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_NONCE_BYTES = 12


class DecryptionError(Exception):
    """A ciphertext did not authenticate (wrong key, or tampered row)."""


class Vault:
    """Holds the two keys of the configuration and does every keyed operation of the core."""

    def __init__(self, data_key: bytes, hmac_key: bytes) -> None:
        if len(data_key) != 32 or len(hmac_key) != 32:
            raise ValueError("data_key and hmac_key must be 32 bytes each")
        self._aead = AESGCM(data_key)
        self._hmac_key = hmac_key

    def digest(self, purpose: str, value: str) -> str:
        """HMAC-SHA-256 of `value`, domain-separated by `purpose`, as hex. Used for lookups by equality."""
        mac = hmac.new(self._hmac_key, purpose.encode() + b"\x00" + value.encode(), hashlib.sha256)
        return mac.hexdigest()

    def matches(self, purpose: str, value: str, expected_digest: str) -> bool:
        """Constant-time comparison of a candidate against a stored digest."""
        return hmac.compare_digest(self.digest(purpose, value), expected_digest)

    def encrypt(self, purpose: str, plaintext: str) -> bytes:
        """nonce || ciphertext+tag; `purpose` is bound as associated data so a ciphertext cannot be moved
        from one column to another."""
        nonce = os.urandom(_NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plaintext.encode(), purpose.encode())

    def decrypt(self, purpose: str, blob: bytes) -> str:
        try:
            return self._aead.decrypt(blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], purpose.encode()).decode()
        except (InvalidTag, ValueError) as exc:
            raise DecryptionError(f"cannot decrypt a {purpose} value") from exc


def random_digits(count: int) -> str:
    """Uniformly random decimal digits from the OS CSPRNG."""
    return "".join(secrets.choice("0123456789") for _ in range(count))


def random_key(prefix: str, nbytes: int = 32) -> str:
    """An API key or session secret: a recognisable prefix and nbytes of entropy."""
    return prefix + secrets.token_urlsafe(nbytes)


def public_id(prefix: str) -> str:
    """Opaque identifiers for payments, merchants and callback attempts (not secrets)."""
    return prefix + secrets.token_hex(12)
