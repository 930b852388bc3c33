"""What an emulated Asterisk plays and how fast: prompt durations, timings, and the options of a run."""

from __future__ import annotations

import functools
import wave
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

SAMPLE_RATE = 8000  # endpos is in 8 kHz samples

# Durations of the stock sounds used in the recordings (docs/protocols/BENCH-DIALPLAN.md), in samples,
# per language.
STOCK_SOUNDS: Mapping[str, Mapping[str, int]] = {
    "fr": {"agent-pass": 23840, "vm-enter-num-to-call": 19200, "demo-congrats": 233760, "beep": 3520},
    "en": {"agent-pass": 26400, "vm-enter-num-to-call": 19200, "demo-congrats": 242240, "beep": 3520},
}


class SessionLeaked(Exception):
    """The FastAGI server kept the session open past EmulatorOptions.max_session_seconds."""


def wav_durations(directory: Path) -> dict[str, int]:
    """Sample counts (at 8 kHz) of the .wav prompts in a directory, by prompt name."""
    out: dict[str, int] = {}
    for path in sorted(directory.glob("*.wav")):
        with wave.open(str(path)) as w:
            out[path.stem] = round(w.getnframes() * SAMPLE_RATE / w.getframerate())
    return out


@functools.cache
def repo_sounds() -> Mapping[str, int]:
    """Durations of the daemon's own prompts when run from a checkout (sounds/fr/*.wav), else {}."""
    directory = Path(__file__).resolve().parents[2] / "sounds" / "fr"
    return wav_durations(directory) if directory.is_dir() else {}


@dataclass(frozen=True)
class EmulatorOptions:
    speed: float = 1.0  # 10.0 runs ten times faster than a real call
    sounds: Mapping[str, int] = field(default_factory=repo_sounds)  # prompts: name -> samples
    default_prompt_samples: int | None = 16000  # any other `idtronic-*` prompt (None: missing file)
    hold_seconds: float = 60.0  # callee-seq: the callee hangs up this long after its script
    say_digit_seconds: float = 0.57  # SAY DIGITS 1234 took 2.3 s in fr
    notice_delay: float = 0.04  # HANGUP after a reply, usage text after `520-`
    handset_delay: float = 0.15  # the callee's script starts this long after the AGI connection
    step_overhead: float = 0.1  # each later DTMF step of the callee-seq While loop starts this late
    variables: Mapping[str, str] = field(default_factory=dict)  # Originate variables (IDTRONIC_CALLBACK)
    max_session_seconds: float | None = None  # raise SessionLeaked if the server never closes
    missing_prompts: frozenset[str] = frozenset()  # sound files this Asterisk lacks


RecordLine = tuple[float, str, bytes]  # (emulated seconds, "AST>" or ">AST", raw line)
