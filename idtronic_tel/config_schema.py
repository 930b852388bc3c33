"""The configuration, as frozen dataclasses: one per section of config/idtronic.toml.

Each key is one field: its type, its default, the check of its values (`setting(default, check)`, the
checks are in config_checks) and a comment saying what it is. config/idtronic.toml and docs/operator.md
document every key with the same default and bounds (tests/test_config_docs.py). Reading the file, the
environment overrides, secret files and the checks that tie two keys together live in config.py.
Durations are seconds (float), rates are per second.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config_checks import (
    Check,
    between,
    c_octet,
    callback_channel,
    calling_hours,
    card_prefixes,
    endpoint,
    header_text,
    matches,
    one_of,
    positive_up_to,
    region,
    seconds,
    secret,
    template,
    timezone,
    workers,
)


def setting(default: Any, check: Check | None = None, *, hidden: bool = False) -> Any:
    """A key of the file: its default and the check of its values; a hidden one (a secret) is never
    shown, in a repr or in a message."""
    return field(default=default, repr=not hidden, metadata={"check": check, "hidden": hidden})


_PAYMENT_FIELDS = frozenset({"code", "amount", "currency", "merchant", "minutes"})
_ASTERISK_NAME = r"[A-Za-z0-9_.+-]{1,79}"
_TON, _NPI = "SMPP 3.4 TON", "SMPP 3.4 NPI"


@dataclass(frozen=True)
class DaemonConfig:
    # Processes of this daemon (supervisor.py): an integer, or "auto" (one per core; one on SQLite).
    workers: int | str = setting(1, workers)


@dataclass(frozen=True)
class HttpConfig:
    listen: str = setting("tcp:8080:interface=127.0.0.1", endpoint("server"))
    max_body_bytes: int = setting(65536, between(1024, 10 * 1024 * 1024, "bytes"))
    # Use X-Forwarded-For for per-address limits (behind a proxy only).
    trust_forwarded_for: bool = setting(False)
    header_timeout: float = setting(
        10.0, seconds(1, 300)
    )  # the request line and headers must arrive within this
    body_timeout: float = setting(
        30.0, seconds(1, 600)
    )  # the body must arrive within this once the headers are in
    # Open connections of one client address (a proxy is one).
    max_connections_per_address: int = setting(128, between(1, 100_000, "connections"))
    # GET /metrics without a key on its own listener; "" for none. The API listener serves it with the
    # operator key either way.
    metrics_listen: str = setting("tcp:9464:interface=127.0.0.1", endpoint("server", allow_empty=True))


@dataclass(frozen=True)
class DatabaseConfig:
    url: str = setting("sqlite:///idtronic-data/idtronic.db")  # checked and made absolute by config.py
    # PostgreSQL; SQLite always uses one thread (see daemon.build).
    pool_threads: int = setting(8, between(1, 64, "threads"))


@dataclass(frozen=True)
class ApiConfig:
    operator_key: str = setting("", secret(16), hidden=True)
    # Per merchant key, all routes.
    merchant_requests_per_minute: int = setting(6000, between(1, 1_000_000, "requests per minute"))
    # Per merchant, POST /v1/payments.
    merchant_payments_per_minute: int = setting(3000, between(1, 1_000_000, "requests per minute"))
    # Enrollment/profile calls per client address.
    public_requests_per_minute: int = setting(30, between(1, 10_000, "requests per minute"))
    # Enrollment/profile calls per identification number.
    identifier_requests_per_hour: int = setting(10, between(1, 1000, "requests per hour"))


@dataclass(frozen=True)
class KeysConfig:
    data_key: bytes = setting(b"", hidden=True)  # AES-256-GCM: card digits, queued SMS texts
    hmac_key: bytes = setting(b"", hidden=True)  # HMAC-SHA-256: tokens, card fingerprints, sessions
    # Key rotation: older keys still read (ciphertexts) and still accepted (digests); never written with.
    data_key_previous: tuple[bytes, ...] = setting((), hidden=True)
    hmac_key_previous: tuple[bytes, ...] = setting((), hidden=True)


@dataclass(frozen=True)
class EnrollmentConfig:
    card_prefixes: tuple[str, ...] = setting(("4", "51-55", "2221-2720"), card_prefixes)
    default_region: str = setting("FR", region)  # of mobile numbers written without +country


@dataclass(frozen=True)
class TokensConfig:
    lifetime: float = setting(300.0, seconds(60, 600, "NIST SP 800-63B"))
    max_attempts: int = setting(3, between(1, 10))  # wrong tokens before the payment fails
    max_resends: int = setting(3, between(0, 10))
    resend_interval: float = setting(30.0, seconds(10, 600))
    per_cardholder_limit: int = setting(5, between(1, 100, "tokens"))  # tokens per cardholder per window
    per_cardholder_window: float = setting(600.0, seconds(60, 86400))
    payment_template: str = setting(
        "id-tronic : code {code} pour payer {amount} {currency} chez {merchant}. "
        "Valable {minutes} min. Ne le communiquez jamais.",
        template(frozenset({"code"}), _PAYMENT_FIELDS),
    )
    profile_template: str = setting(
        "id-tronic : code {code} pour ouvrir votre espace personnel. "
        "Valable {minutes} min. Ne le communiquez jamais.",
        template(frozenset({"code"}), frozenset({"code", "minutes"})),
    )
    mobile_change_notice: str = setting(
        "id-tronic : un changement de numero de mobile a ete demande pour votre compte. "
        "Si ce n'est pas vous, contactez votre banque.",
        template(frozenset(), frozenset()),
    )


@dataclass(frozen=True)
class BudgetConfig:
    max_consecutive_failures: int = setting(5, between(3, 5, why="PSD2 RTS art. 4(3)(b) allows at most 5"))
    # The lock those failures cause is temporary (PSD2 RTS art. 4(4)); each lock in a row, with no success
    # in between, lasts lock_growth times the previous one, up to max_lock_duration.
    lock_duration: float = setting(1800.0, seconds(60, 86400))
    lock_growth: int = setting(2, between(1, 10))
    max_lock_duration: float = setting(86400.0, seconds(60, 30 * 86400))
    lock_notice: str = setting(
        "id-tronic : trop de codes errones, votre compte est bloque pendant {duration}. "
        "Si ce n'est pas vous, contactez votre banque.",
        template(frozenset(), frozenset({"duration"})),
    )


@dataclass(frozen=True)
class ProfileConfig:
    session_idle: float = setting(300.0, seconds(60, 300, "PSD2 RTS art. 4(3)(d) allows at most 5 minutes"))


@dataclass(frozen=True)
class CallbackConfig:
    first_call_delay: float = setting(10.0, seconds(0, 3600))
    max_calls: int = setting(3, between(1, 10))
    retry_interval: float = setting(300.0, seconds(60, 3600))
    calling_hours: str = setting("08:00-21:00", calling_hours)
    timezone: str = setting("Europe/Paris", timezone)
    max_entries: int = setting(3, between(1, 5))  # DTMF entries per call
    dtmf_timeout: float = setting(10.0, seconds(3, 30))  # GET DATA timeout
    # How often a daemon looks for due callbacks of other daemons.
    poll_interval: float = setting(1.0, seconds(0.1, 60))


@dataclass(frozen=True)
class VoiceFallbackConfig:
    enabled: bool = setting(False)
    # Call when no delivery receipt came within this delay.
    no_receipt_after: float = setting(60.0, seconds(10, 600))
    repeats: int = setting(2, between(1, 5))  # how many times the token is read


@dataclass(frozen=True)
class AgiConfig:
    listen: str = setting("tcp:4573:interface=127.0.0.1", endpoint("server"))
    # A short backlog loses sessions while Asterisk reports SUCCESS (docs/protocols/AGI.md).
    backlog: int = setting(1024, between(1, 65535))
    # Longest wait for one AGI reply (prompts + DTMF timeout fit inside).
    command_timeout: float = setting(60.0, seconds(5, 600))
    language: str = setting(
        "fr", matches(r"[a-z]{2,3}(_[A-Za-z]{2,4})?", 'an Asterisk language code such as "fr" or "en_GB"')
    )


@dataclass(frozen=True)
class AmiConfig:
    endpoint: str = setting("tcp:127.0.0.1:5038", endpoint("client"))
    username: str = setting("idtronic", header_text())
    secret: str = setting("", header_text(), hidden=True)
    auth: str = setting("md5", one_of("md5", "plain"))  # "md5" (challenge) or "plain"
    callback_channel: str = setting("PJSIP/{national}@operator-trunk", callback_channel)
    callback_context: str = setting(
        "idtronic-callback", matches(_ASTERISK_NAME, "an Asterisk context name (letters, digits, _ . + -)")
    )
    callback_exten: str = setting(
        "s", matches(_ASTERISK_NAME, "an Asterisk extension (letters, digits, _ . + -)")
    )
    caller_id: str = setting('"id-tronic" <0000000000>', header_text())
    originate_timeout: float = setting(40.0, seconds(5, 300))  # ring time before NO_ANSWER
    action_timeout: float = setting(10.0, seconds(1, 120))  # every AMI action must be answered within this
    ping_interval: float = setting(20.0, seconds(1, 600))  # keepalive; a missed Pong drops the link
    # After originate_timeout: unresolved attempts become UNKNOWN.
    outcome_grace: float = setting(60.0, seconds(0, 3600))
    reconnect_max_delay: float = setting(60.0, seconds(1, 3600))


@dataclass(frozen=True)
class SmppBindConfig:
    name: str = setting("smsc1", matches(r"[A-Za-z0-9_.-]{1,32}", "1 to 32 letters, digits, _ . -"))
    endpoint: str = setting("tcp:127.0.0.1:2775", endpoint("client"))
    system_id: str = setting("idtronic", c_octet(15))
    # SMPP 3.4 says 8 characters; some SMSCs issue longer passwords.
    password: str = setting("", c_octet(64, allow_empty=True), hidden=True)
    system_type: str = setting("", c_octet(12, allow_empty=True))
    # "transmitter_receiver": two binds on two connections.
    mode: str = setting("transceiver", one_of("transceiver", "transmitter_receiver"))
    window: int = setting(10, between(1, 1000, "outstanding requests"))  # outstanding submit_sm
    max_tps: float = setting(100.0, positive_up_to(10000, "messages per second"))  # token bucket
    source_addr: str = setting("IDTRONIC")  # checked with source_ton by config.py
    source_ton: int = setting(5, between(0, 6, why=_TON))  # 5: alphanumeric
    source_npi: int = setting(0, between(0, 18, why=_NPI))
    dest_ton: int = setting(1, between(0, 6, why=_TON))  # international
    dest_npi: int = setting(1, between(0, 18, why=_NPI))  # E.164


@dataclass(frozen=True)
class SmppConfig:
    binds: tuple[SmppBindConfig, ...] = ()
    enquire_link_interval: float = setting(30.0, seconds(5, 600))
    # No PDU at all from the SMSC for this long: drop and reconnect.
    link_dead_timeout: float = setting(90.0, seconds(10, 3600))
    # Every request (bind, submit_sm, enquire_link, unbind).
    response_timeout: float = setting(10.0, seconds(1, 120))
    reconnect_max_delay: float = setting(60.0, seconds(1, 3600))
    # A refused bind (wrong password) is retried this slowly.
    bind_refused_retry: float = setting(300.0, seconds(10, 86400))
    registered_delivery: bool = setting(True)
    # How often a daemon looks for messages queued by other daemons.
    poll_interval: float = setting(0.5, seconds(0.05, 60))
    # This daemon's name in SMS claims and callback attempts (workers.py); empty: <host name>:<pid>.
    worker: str = setting(
        "",
        matches(
            r"((?!.*:\d+$)[A-Za-z0-9_.:@-]{1,100})?",
            "empty, or 1 to 100 letters, digits, _ . : @ - not ending in :<digits> (the default's form)",
        ),
    )


@dataclass(frozen=True)
class DemoConfig:
    """`idtronic-tel run --demo`: start the built-in SMSC simulator and the Asterisk emulator with a
    simulated handset on loopback, and point the daemon at them."""

    enabled: bool = setting(False)
    smsc_listen: str = setting("tcp:0:interface=127.0.0.1", endpoint("server"))
    ami_listen: str = setting("tcp:0:interface=127.0.0.1", endpoint("server"))
    # Digits the simulated handset keys; empty: computed to pass the Luhn check.
    handset_last8: str = setting("", matches(r"(\d{8})?", "empty or exactly 8 digits"))


@dataclass(frozen=True)
class Config:
    data_dir: Path = Path("idtronic-data")
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    keys: KeysConfig = field(default_factory=KeysConfig)
    enrollment: EnrollmentConfig = field(default_factory=EnrollmentConfig)
    tokens: TokensConfig = field(default_factory=TokensConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    callback: CallbackConfig = field(default_factory=CallbackConfig)
    voice_fallback: VoiceFallbackConfig = field(default_factory=VoiceFallbackConfig)
    agi: AgiConfig = field(default_factory=AgiConfig)
    ami: AmiConfig = field(default_factory=AmiConfig)
    smpp: SmppConfig = field(default_factory=SmppConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)
