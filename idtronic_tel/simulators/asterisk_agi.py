"""The Asterisk side of a FastAGI session, as recorded from Asterisk 22.10.1 (docs/protocols/AGI.md).

    status = await run_agi_channel(reactor, "tcp:127.0.0.1:4573", env, Handset.scripted("w1|d12345678#"))

connects to a FastAGI server, writes the `agi_*` block in Asterisk's order, then answers commands one at
a time as Asterisk does, while a simulated handset keys DTMF and hangs up on its own timeline (the
`callee-seq` script of the recordings). Returns the AGISTATUS the dialplan would see:

* SUCCESS  the server closed the socket;
* FAILURE  connection refused, or a command failed on a live channel (STREAM FILE of a missing file);
* HANGUP   the channel hung up (the callee, or the HANGUP command).

Recorded behaviours reproduced: DTMF keyed while no command runs is discarded; a line written while a
command runs aborts it without a reply (WAIT FOR DIGIT replies `200 result=1`); after a hang-up only
GET VARIABLE & co. work, the rest gets 511; `HANGUP\\n` comes once, ~40 ms after the reply of the
interrupted command or at once when idle; usage text of a 520 reply comes ~40 ms after its first line;
`\\r\\n` is not accepted. Asterisk never closes the socket itself: neither does this emulator.

A prompt that does not exist (`EmulatorOptions.missing_prompts`, or an unknown name) is answered at once
with `200 result=-1` while the channel lives on: STREAM FILE as recorded (`endpos=0`, AGISTATUS becomes
FAILURE), GET DATA as res_agi.c/app.c do (plain `200 result=-1`; GET DATA with an empty prompt plays
nothing and only collects digits). CHANNEL STATUS answers the channel state (6: up), and, like every
command res_agi.c refuses on a dead channel, 511 after a hang-up.

`EmulatorOptions.speed` compresses time (prompts, timeouts, the handset's script) so tests run fast.
The channel is `agi_channel`, the commands `agi_commands`, the options and prompt durations `agi_options`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from twisted.internet.endpoints import clientFromString, connectProtocol
from twisted.internet.error import ConnectError

from idtronic_tel.simulators.agi_channel import EmulatedAgiChannel
from idtronic_tel.simulators.agi_options import SAMPLE_RATE, EmulatorOptions, RecordLine, repo_sounds
from idtronic_tel.simulators.handset import Answer, Handset


def default_env(
    script: str = "enroll",
    args: tuple[str, ...] = (),
    *,
    host: str = "127.0.0.1",
    port: int = 4573,
    language: str = "fr",
    channel: str = "Local/0611223344@callee-seq-00000000;1",
    uniqueid: str = "1795710490.0",
    callerid: str = "0600000000",
) -> dict[str, str]:
    """An env block like the recordings' (agi-fr context, priority 4)."""
    env = {
        "agi_network": "yes",
        "agi_network_script": script,
        "agi_request": f"agi://{host}:{port}/{script}",
        "agi_channel": channel,
        "agi_language": language,
        "agi_type": channel.split("/", 1)[0],
        "agi_uniqueid": uniqueid,
        "agi_version": "22.10.1",
        "agi_callerid": callerid,
        "agi_calleridname": "Enroll",
        "agi_callingpres": "0",
        "agi_callingani2": "0",
        "agi_callington": "0",
        "agi_callingtns": "0",
        "agi_dnid": "unknown",
        "agi_rdnis": "unknown",
        "agi_context": "agi-fr" if language == "fr" else "agi-en",
        "agi_extension": "s",
        "agi_priority": "4" if language == "fr" else "3",
        "agi_enhanced": "0.0",
        "agi_accountcode": "",
        "agi_threadid": "139731737990848",
    }
    env.update({f"agi_arg_{i}": a for i, a in enumerate(args, start=1)})
    return env


def first_run_handset(last8: str, welcome_seconds: float | None = None) -> Handset:
    """The demo's simulated cardholder: answers, lets the welcome prompt play to its end, then keys
    `last8` and `#` while the entry prompt plays."""
    if not re.fullmatch(r"\d{8}", last8):
        raise ValueError("the simulated handset needs exactly 8 digits")
    if welcome_seconds is None:
        welcome_seconds = repo_sounds().get("idtronic-welcome", 16000) / SAMPLE_RATE
    return Handset.scripted(f"w{welcome_seconds + 1.0:.2f}|d{last8}#")


async def run_agi_channel(
    reactor: Any,
    agi_endpoint: str,
    env: Mapping[str, str],
    handset: Handset,
    options: EmulatorOptions | None = None,
    record: list[RecordLine] | None = None,
) -> str:
    """Run one emulated AGI() dialplan application against a FastAGI server; returns AGISTATUS."""
    if handset.answer is not Answer.ANSWER:
        raise ValueError("only an answered call runs the AGI application")
    options = options or EmulatorOptions()
    full_env = default_env(**_env_hints(env))
    full_env.update(env)
    channel = EmulatedAgiChannel(reactor, full_env, handset, options, record)
    try:
        await connectProtocol(clientFromString(reactor, agi_endpoint), channel)
    except ConnectError:
        channel.stop()
        return "FAILURE"
    return await channel.status


def _env_hints(env: Mapping[str, str]) -> dict[str, Any]:
    hints: dict[str, Any] = {}
    if "agi_network_script" in env:
        hints["script"] = env["agi_network_script"]
    if "agi_language" in env:
        hints["language"] = env["agi_language"]
    return hints
