"""idtronic_tel.endpoints reads endpoint strings as Twisted does."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.endpoints import _parse

from idtronic_tel import endpoints


@given(st.text(alphabet=st.sampled_from("ab:=\\ 1"), max_size=30))
def test_split_is_twisteds_split(description: str) -> None:
    try:
        expected = _parse(description)
    except RuntimeError:
        return  # a dangling escape: Twisted's tokenizer fails (StopIteration inside its generator)
    assert endpoints.split(description) == expected


@pytest.mark.parametrize(
    ("description", "kind", "host", "port"),
    [
        ("tcp:8080:interface=127.0.0.1", "tcp", "127.0.0.1", 8080),
        ("tcp6:port=0:interface=\\:\\:1", "tcp6", "::1", None),
        ("tcp6:4573:interface=\\:\\:1", "tcp6", "::1", 4573),
        ("ssl:8443:privateKey=k.pem:certKey=c.pem", "ssl", "", 8443),
        ("unix:/run/idtronic.sock", "unix", "", None),
    ],
)
def test_server(description: str, kind: str, host: str, port: int | None) -> None:
    parsed = endpoints.server(description)
    assert (parsed.kind, parsed.host, parsed.port) == (kind, host, port)


@pytest.mark.parametrize(
    ("description", "host", "port", "tls"),
    [
        ("tcp:127.0.0.1:5038", "127.0.0.1", 5038, False),
        ("tcp:host=asterisk:port=5038:timeout=5", "asterisk", 5038, False),
        ("tcp:5038:host=asterisk", "asterisk", 5038, False),
        ("tls:smsc.example.net:3550", "smsc.example.net", 3550, True),
        ("unix:/run/x.sock", "", None, False),
    ],
)
def test_client(description: str, host: str, port: int | None, tls: bool) -> None:
    parsed = endpoints.client(description)
    assert (parsed.host, parsed.port, parsed.tls) == (host, port, tls)


def test_with_option_quotes_the_value() -> None:
    assert endpoints.with_option("tcp:0", "interface", "::1") == "tcp:0:interface=\\:\\:1"
    assert endpoints.server(endpoints.with_option("tcp:0", "interface", "::1")).host == "::1"
