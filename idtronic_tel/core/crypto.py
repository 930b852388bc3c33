"""Secrets at rest: keyed hashes for tokens, keys and card fingerprints; AES-256-GCM for card digits and
queued SMS texts. Nothing here logs; nothing here returns a secret inside an exception message.

Key rotation (docs/operations.md, Key rotation): the Vault holds the current data and HMAC keys plus
optional previous ones. New ciphertexts start with a version byte and the id of the key that wrote them
(`header`), so decryption goes straight to the right key; blobs written before key ids (nonce first) are
tried under every key. Digests are computed under the current key; lookups accept any configured key.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_NONCE_BYTES = 12
_VERSION = b"\x01"
HEADER_BYTES = 1 + 4  # version, key id
_SEALED = HEADER_BYTES + _NONCE_BYTES  # where the ciphertext starts


class DecryptionError(Exception):
    """A ciphertext did not authenticate (wrong key, or tampered row)."""


def key_id(key: bytes) -> bytes:
    """4 bytes naming a key without revealing it (a domain-separated SHA-256 of the 32-byte key)."""
    return hashlib.sha256(b"idtronic-tel key id\x00" + key).digest()[:4]


def _mac(key: bytes, purpose: str, value: str) -> str:
    return hmac.new(key, purpose.encode() + b"\x00" + value.encode(), hashlib.sha256).hexdigest()


class Vault:
    """Holds the keys of the configuration and does every keyed operation of the core."""

    def __init__(
        self,
        data_key: bytes,
        hmac_key: bytes,
        previous_data_keys: Sequence[bytes] = (),
        previous_hmac_keys: Sequence[bytes] = (),
    ) -> None:
        if any(len(key) != 32 for key in (data_key, hmac_key, *previous_data_keys, *previous_hmac_keys)):
            raise ValueError("data and hmac keys must be 32 bytes each")
        self.header = _VERSION + key_id(data_key)
        self._aead = AESGCM(data_key)
        # Current key first: legacy blobs are most likely under it.
        self._aeads = {_VERSION + key_id(key): AESGCM(key) for key in (data_key, *previous_data_keys)}
        if len(self._aeads) != 1 + len(previous_data_keys):
            raise ValueError("two configured data keys are equal or share a key id: generate a new key")
        self._hmac_key = hmac_key
        self._previous_hmac_keys = tuple(previous_hmac_keys)
        self.hmac_key_id = key_id(hmac_key).hex()  # stored beside digests that cannot be recomputed

    def digest(self, purpose: str, value: str) -> str:
        """HMAC-SHA-256 of `value` under the current key, domain-separated by `purpose`, as hex."""
        return _mac(self._hmac_key, purpose, value)

    def digests(self, purpose: str, value: str) -> tuple[str, ...]:
        """The digest under the current key first, then under each previous key: for lookups by
        equality (`WHERE digest IN (...)`). Only one digest when no previous key is configured."""
        return (self.digest(purpose, value), *(_mac(k, purpose, value) for k in self._previous_hmac_keys))

    def matches(self, purpose: str, value: str, expected_digest: str) -> bool:
        """Constant-time comparison of a candidate against a stored digest, under every configured key."""
        expected = expected_digest.encode()  # bytes: any posted text compares (str must be ASCII)
        found = hmac.compare_digest(self.digest(purpose, value).encode(), expected)
        for key in self._previous_hmac_keys:  # every one, whatever the first gave: constant time
            found |= hmac.compare_digest(_mac(key, purpose, value).encode(), expected)
        return found

    def encrypt(self, purpose: str, plaintext: str) -> bytes:
        """header || nonce || ciphertext+tag, under the current key; `purpose` is bound as associated data
        so a ciphertext cannot be moved from one column to another."""
        nonce = os.urandom(_NONCE_BYTES)
        return self.header + nonce + self._aead.encrypt(nonce, plaintext.encode(), purpose.encode())

    def is_current(self, blob: bytes) -> bool:
        """Written under the current key (by its header; a legacy blob is not)."""
        return blob[:HEADER_BYTES] == self.header

    def decrypt(self, purpose: str, blob: bytes) -> str:
        aead = self._aeads.get(blob[:HEADER_BYTES])
        if aead is not None:
            try:
                return aead.decrypt(blob[HEADER_BYTES:_SEALED], blob[_SEALED:], purpose.encode()).decode()
            except (InvalidTag, ValueError):
                pass  # a legacy blob whose nonce happens to start like a header
        for aead in self._aeads.values():  # a legacy blob (nonce first): the tag fails fast on a wrong key
            plain = _open(aead, purpose, blob)
            if plain is not None:
                return plain
        raise DecryptionError(
            f"cannot decrypt a {purpose} value with keys.data_key_file nor keys.data_key_previous_files: "
            "configure the key it was written with, or the row was altered"
        )


def _open(aead: AESGCM, purpose: str, sealed: bytes) -> str | None:
    try:
        return aead.decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], purpose.encode()).decode()
    except (InvalidTag, ValueError):
        return None


def random_digits(count: int) -> str:
    """Uniformly random decimal digits from the OS CSPRNG."""
    return "".join(secrets.choice("0123456789") for _ in range(count))


def random_key(prefix: str, nbytes: int = 32) -> str:
    """An API key or session secret: a recognisable prefix and nbytes of entropy."""
    return prefix + secrets.token_urlsafe(nbytes)


def public_id(prefix: str) -> str:
    """Opaque identifiers for payments, merchants and callback attempts (not secrets)."""
    return prefix + secrets.token_hex(12)
