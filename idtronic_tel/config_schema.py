"""The configuration, as frozen dataclasses: one per section of config/idtronic.toml.

Parsing, defaults from the file, environment overrides and validation live in idtronic_tel/config.py;
this module only says what each section holds, so that every service takes exactly the section it needs.
Durations are seconds (float), rates are per second.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class HttpConfig:
    listen: str = "tcp:8080:interface=127.0.0.1"
    max_body_bytes: int = 65536
    trust_forwarded_for: bool = False  # use X-Forwarded-For for per-address limits (behind a proxy only)
    header_timeout: float = 10.0  # the request line and headers must arrive within this
    body_timeout: float = 30.0  # the body must arrive within this once the headers are in
    max_connections_per_address: int = 128  # open connections of one client address (a proxy is one)
    # GET /metrics without a key on its own listener; "" for none. The API listener serves it with the
    # operator key either way.
    metrics_listen: str = "tcp:9464:interface=127.0.0.1"


@dataclass(frozen=True)
class DatabaseConfig:
    url: str = "sqlite:///idtronic-data/idtronic.db"
    pool_threads: int = 8  # PostgreSQL; SQLite always uses one thread (see daemon.build)


@dataclass(frozen=True)
class ApiConfig:
    operator_key: str = field(default="", repr=False)
    merchant_requests_per_minute: int = 6000  # per merchant key, all routes
    merchant_payments_per_minute: int = 3000  # per merchant, POST /v1/payments
    public_requests_per_minute: int = 30  # enrollment/profile calls per client address
    identifier_requests_per_hour: int = 10  # enrollment/profile calls per identification number


@dataclass(frozen=True)
class KeysConfig:
    data_key: bytes = field(default=b"", repr=False)  # AES-256-GCM: card digits, queued SMS texts
    hmac_key: bytes = field(default=b"", repr=False)  # HMAC-SHA-256: tokens, card fingerprints, sessions


@dataclass(frozen=True)
class EnrollmentConfig:
    card_prefixes: tuple[str, ...] = ("4", "51-55", "2221-2720")
    default_region: str = "FR"


@dataclass(frozen=True)
class TokensConfig:
    lifetime: float = 300.0  # 60..600 (NIST SP 800-63B)
    max_attempts: int = 3  # wrong tokens before the payment fails
    max_resends: int = 3
    resend_interval: float = 30.0
    per_cardholder_limit: int = 5  # tokens issued per cardholder per window
    per_cardholder_window: float = 600.0
    payment_template: str = (
        "id-tronic : code {code} pour payer {amount} {currency} chez {merchant}. "
        "Valable {minutes} min. Ne le communiquez jamais."
    )
    profile_template: str = (
        "id-tronic : code {code} pour ouvrir votre espace personnel. "
        "Valable {minutes} min. Ne le communiquez jamais."
    )
    mobile_change_notice: str = (
        "id-tronic : un changement de numero de mobile a ete demande pour votre compte. "
        "Si ce n'est pas vous, contactez votre banque."
    )


@dataclass(frozen=True)
class BudgetConfig:
    max_consecutive_failures: int = 5  # PSD2 RTS art. 4(3)(b)


@dataclass(frozen=True)
class ProfileConfig:
    session_idle: float = 300.0  # PSD2 RTS art. 4(3)(d)


@dataclass(frozen=True)
class CallbackConfig:
    first_call_delay: float = 10.0
    max_calls: int = 3
    retry_interval: float = 300.0
    calling_hours: str = "08:00-21:00"
    timezone: str = "Europe/Paris"
    max_entries: int = 3  # DTMF entries per call
    dtmf_timeout: float = 10.0  # GET DATA timeout
    poll_interval: float = 1.0  # how often a daemon looks for due callbacks of other daemons


@dataclass(frozen=True)
class VoiceFallbackConfig:
    enabled: bool = False
    no_receipt_after: float = 60.0  # call when no delivery receipt came within this delay
    repeats: int = 2  # how many times the token is read


@dataclass(frozen=True)
class AgiConfig:
    listen: str = "tcp:4573:interface=127.0.0.1"
    # A short backlog loses sessions while Asterisk reports SUCCESS (docs/protocols/AGI.md).
    backlog: int = 1024
    command_timeout: float = 60.0  # longest wait for one AGI reply (prompts + DTMF timeout fit inside)
    language: str = "fr"


@dataclass(frozen=True)
class AmiConfig:
    endpoint: str = "tcp:127.0.0.1:5038"
    username: str = "idtronic"
    secret: str = field(default="", repr=False)
    auth: str = "md5"  # "md5" (challenge) or "plain"
    callback_channel: str = "PJSIP/{national}@operator-trunk"
    callback_context: str = "idtronic-callback"
    callback_exten: str = "s"
    caller_id: str = '"id-tronic" <0000000000>'
    originate_timeout: float = 40.0  # ring time before NO_ANSWER
    action_timeout: float = 10.0  # every AMI action must be answered within this
    ping_interval: float = 20.0  # keepalive; a missed Pong drops the link
    outcome_grace: float = 60.0  # after originate_timeout: unresolved attempts become UNKNOWN
    reconnect_max_delay: float = 60.0


@dataclass(frozen=True)
class SmppBindConfig:
    name: str = "smsc1"
    endpoint: str = "tcp:127.0.0.1:2775"
    system_id: str = "idtronic"
    password: str = field(default="", repr=False)
    system_type: str = ""
    mode: str = "transceiver"  # or "transmitter_receiver": two binds on two connections
    window: int = 10  # outstanding submit_sm
    max_tps: float = 100.0  # messages per second (token bucket)
    source_addr: str = "IDTRONIC"
    source_ton: int = 5  # alphanumeric
    source_npi: int = 0
    dest_ton: int = 1  # international
    dest_npi: int = 1  # E.164


@dataclass(frozen=True)
class SmppConfig:
    binds: tuple[SmppBindConfig, ...] = ()
    enquire_link_interval: float = 30.0
    link_dead_timeout: float = 90.0  # no PDU at all from the SMSC for this long: drop and reconnect
    response_timeout: float = 10.0  # every request (bind, submit_sm, enquire_link, unbind)
    reconnect_max_delay: float = 60.0
    bind_refused_retry: float = 300.0  # a refused bind (wrong password) is retried this slowly
    registered_delivery: bool = True
    poll_interval: float = 0.5  # how often a daemon looks for messages queued by other daemons


@dataclass(frozen=True)
class DemoConfig:
    """`idtronic-tel run --demo`: start the built-in SMSC simulator and the Asterisk emulator with a
    simulated handset on loopback, and point the daemon at them."""

    enabled: bool = False
    smsc_listen: str = "tcp:0:interface=127.0.0.1"
    ami_listen: str = "tcp:0:interface=127.0.0.1"
    handset_last8: str = ""  # digits the simulated handset keys; empty: computed to pass the Luhn check


@dataclass(frozen=True)
class Config:
    data_dir: Path = Path("idtronic-data")
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
