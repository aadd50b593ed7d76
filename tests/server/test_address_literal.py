"""Address literals in MAIL/RCPT (RFC 5321 4.1.3): only real ones are taken."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.server.conftest import Client, StartServer, port_of


@pytest.mark.parametrize(
    ("address", "reply"),
    [
        ("x@[127.0.0.1]", "250 2.1.5 Recipient OK"),
        ("x@[IPv6:::1]", "250 2.1.5 Recipient OK"),
        ("x@[1.2.3]", "553 5.1.3 Malformed address: bad address literal"),
        ("x@[300.1.1.1]", "553 5.1.3 Malformed address: bad address literal"),
        ("x@[IPv6:not-an-address]", "553 5.1.3 Malformed address: bad address literal"),
        ("x@[]", "553 5.1.3 Malformed address: bad address literal"),
    ],
)
async def test_address_literals(
    tmp_path: Path, start_server: StartServer, address: str, reply: str
) -> None:
    """A dotted-quad or IPv6 literal is a recipient; three octets or a bad IPv6 is 553
    (the protocol fuzz test found ``[1.2.3]`` accepted)."""
    app = await start_server(TrustedNetworks=["127.0.0.0/8"])
    client = await Client.connect(port_of(app))
    await client.ehlo()
    assert (await client.cmd("MAIL FROM:<a@example.com>")).startswith("250")
    assert await client.cmd(f"RCPT TO:<{address}>") == reply
    await client.close()
