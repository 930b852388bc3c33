"""Names of the IVR prompts: the files scripts/make-prompts generates in sounds/<language>/
(Asterisk plays `idtronic-welcome` from sounds/fr/idtronic-welcome.wav when the channel language is fr)."""

from __future__ import annotations

import enum


class Prompt(enum.StrEnum):
    WELCOME = "idtronic-welcome"
    ENTER_LAST8 = "idtronic-enter-last8"
    WRONG_RETRY = "idtronic-wrong-retry"
    SUCCESS = "idtronic-success"
    MOBILE_SUCCESS = "idtronic-mobile-success"
    FAILED = "idtronic-failed"
    LOCKED = "idtronic-locked"
    NO_ENTRY = "idtronic-no-entry"
    UNKNOWN_CALL = "idtronic-unknown-call"
    GOODBYE = "idtronic-goodbye"
    TOKEN_INTRO = "idtronic-token-intro"
    TOKEN_REPEAT = "idtronic-token-repeat"
