"""What the core is configured with: its own sections of the configuration, and the one figure it takes
from the telephony edge, how long a call attempt may stay unresolved. The assembly (daemon.py) builds it
from the whole configuration; the core never sees AMI, HTTP or SMPP settings (tests/test_layout.py)."""

from __future__ import annotations

from dataclasses import dataclass

from ..config_schema import (
    BudgetConfig,
    CallbackConfig,
    EnrollmentConfig,
    ProfileConfig,
    TokensConfig,
    VoiceFallbackConfig,
)


@dataclass(frozen=True)
class CoreSettings:
    enrollment: EnrollmentConfig
    tokens: TokensConfig
    budget: BudgetConfig
    profile: ProfileConfig
    callback: CallbackConfig
    voice_fallback: VoiceFallbackConfig
    # Seconds from a call's claim to its deadline: the Originate's own timeout plus the grace for its
    # outcome to arrive; past it, housekeeping ends the attempt (callbacks.resolve_stale).
    call_deadline: float
