"""command_status values: names for logs, and which submit_sm errors are worth retrying."""

from __future__ import annotations

from typing import Final

from smpplib import consts

from . import codec

# Retry the same message later on this or another bind: the SMSC is busy, not refusing the message.
THROTTLING: Final = frozenset({codec.ESME_RTHROTTLED, codec.ESME_RMSGQFUL})
# Transient failures where nothing was accepted: put the message back in the outbox (mark_retry).
TRANSIENT: Final = frozenset({codec.ESME_RSYSERR, codec.ESME_RX_T_APPN, codec.ESME_RINVBNDSTS})


def status_name(status: int) -> str:
    for name, value in vars(consts).items():
        if name.startswith("SMPP_ESME_") and value == status:
            return f"0x{status:08X} {name[len('SMPP_') :]}"
    return f"0x{status:08X}"
