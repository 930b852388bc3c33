"""What can go wrong with an SMPP request, as exceptions the worker tells apart."""

from __future__ import annotations

from .status import status_name


class SmppError(Exception):
    pass


class BindRefused(SmppError):
    """The SMSC answered the bind with a non-zero command_status (e.g. 0x0E ESME_RINVPASWD)."""

    def __init__(self, status: int) -> None:
        super().__init__(f"bind refused: {status_name(status)}")
        self.status = status


class NotBound(SmppError):
    """The session is not in a state where this request may be sent; nothing was written."""


class RequestFailed(SmppError):
    """The SMSC answered the request with a non-zero command_status (or generic_nack)."""

    def __init__(self, command: str, status: int) -> None:
        super().__init__(f"{command}: {status_name(status)}")
        self.command = command
        self.status = status


class NoResponse(SmppError):
    """The request was written but its response never came: timeout, or the connection went away.

    For submit_sm: the SMSC may or may not have accepted the message (the worker sends it again)."""

    def __init__(self, command: str, why: str) -> None:
        super().__init__(f"{command}: no response ({why})")
        self.command = command
        self.why = why
