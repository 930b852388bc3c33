"""What a Twisted endpoint string says (`tcp:8080:interface=127.0.0.1`, `tcp:127.0.0.1:5038`), read the way
`serverFromString` and `clientFromString` read it: `:` separates the arguments, `\\` makes the next
character literal, an argument holding `=` is a keyword argument; the first argument is the type. For
TCP-like types (tcp, tcp6, ssl, tls) a server's first argument is its port and `interface=` its address;
a client's are `host` and `port`, by position or by keyword. Twisted itself builds the endpoints; this
module only answers questions about the string (type, port, address) and adds keyword arguments."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from twisted.internet.endpoints import quoteStringArgument

TCP_TYPES = frozenset({"tcp", "tcp6", "ssl", "tls"})
TLS_TYPES = frozenset({"ssl", "tls"})


@dataclass(frozen=True)
class EndpointString:
    kind: str  # the type, lower-case: "tcp", "ssl", "unix"...
    host: str  # a server's interface ("": every one), a client's host; "" when not a TCP-like type
    port: int | None  # None: not a TCP-like type, or no numeric port
    options: Mapping[str, str]  # the keyword arguments

    @property
    def tls(self) -> bool:
        return self.kind in TLS_TYPES


def split(description: str) -> tuple[list[str], dict[str, str]]:
    """Positional and keyword arguments, as Twisted's parser splits them (`a:b=1:c` -> [a, c], {b: 1})."""
    args: list[str] = []
    kwargs: dict[str, str] = {}
    current: list[str] = []  # the argument being read: one item, or two once its `=` is seen
    text = ""
    chars = iter(description)
    for char in chars:
        if char == "\\":
            text += next(chars, "")
        elif char == "=" and not current:
            current, text = [text], ""
        elif char == ":":
            _add(args, kwargs, current, text)
            current, text = [], ""
        else:
            text += char
    _add(args, kwargs, current, text)
    return args, kwargs


def _add(args: list[str], kwargs: dict[str, str], current: list[str], text: str) -> None:
    if current:
        kwargs[current[0]] = text
    else:
        args.append(text)


def server(description: str) -> EndpointString:
    """A server endpoint string: its port and the interface it listens on."""
    args, kwargs = split(description)
    kind = args[0].lower()
    if kind not in TCP_TYPES:
        return EndpointString(kind, "", None, kwargs)
    return EndpointString(kind, kwargs.get("interface", ""), _port(args[1] if len(args) > 1 else ""), kwargs)


def client(description: str) -> EndpointString:
    """A client endpoint string: the host and port it connects to."""
    args, kwargs = split(description)
    kind = args[0].lower()
    if kind not in TCP_TYPES:
        return EndpointString(kind, "", None, kwargs)
    positional = args[1:3]
    if len(positional) == 2:
        host, port = positional
    elif positional and "host" in kwargs:
        host, port = kwargs["host"], positional[0]
    elif positional:
        host, port = positional[0], kwargs.get("port", "")
    else:
        host, port = kwargs.get("host", ""), kwargs.get("port", "")
    return EndpointString(kind, host, _port(port), kwargs)


def _port(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def with_option(description: str, key: str, value: str) -> str:
    """The string with one more keyword argument."""
    return f"{description}:{key}={quoteStringArgument(value)}"
