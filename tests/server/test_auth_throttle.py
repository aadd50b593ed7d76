"""AUTH throttling by client address and user name: one app with a wrong password does
not lock the other apps on the same address out, and guessing stays throttled (issue 17)."""

from __future__ import annotations

import base64

from tests.server.conftest import PASSWORD, USER, Client, StartServer, port_of, user_entry

OTHER = "other@example.com"
OTHER_PASSWORD = "other-secret"


def plain(user: str, password: str) -> str:
    """An AUTH PLAIN command line with an initial response."""
    return "AUTH PLAIN " + base64.b64encode(f"\0{user}\0{password}".encode()).decode()


async def client_for(port: int) -> Client:
    """A connected client that has said EHLO."""
    client = await Client.connect(port)
    await client.ehlo()
    return client


async def test_other_user_on_same_address_still_logs_in(start_server: StartServer) -> None:
    """After one user is throttled from 127.0.0.1, another user's right password from
    127.0.0.1 still gets 235, while the throttled user keeps getting 421."""
    app = await start_server(
        Users=[user_entry(), user_entry(OTHER, OTHER_PASSWORD)],
        AuthFailureLimit=3,
    )
    port = port_of(app)
    bad = await client_for(port)
    assert (await bad.cmd(plain(USER, "nope"))).startswith("535 5.7.8")
    assert (await bad.cmd(plain(USER, "nope"))).startswith("535 5.7.8")
    assert (await bad.cmd(plain(USER, "nope"))).startswith("421 4.7.0")
    assert await bad.closed()

    other = await client_for(port)
    assert await other.cmd(plain(OTHER, OTHER_PASSWORD)) == "235 2.7.0 Authentication successful"

    again = await client_for(port)
    assert (await again.cmd(plain(USER, PASSWORD))).startswith("421 4.7.0")
    assert await again.closed()


async def test_address_trying_many_names_is_throttled(start_server: StartServer) -> None:
    """An address that fails for many different names is throttled as a whole, so even
    a right password from it gets 421 (password spraying stays expensive)."""
    app = await start_server(
        Users=[user_entry(), user_entry(OTHER, OTHER_PASSWORD)],
        AuthFailureLimit=2,
    )
    port = port_of(app)
    replies = []
    for index in range(20):
        client = await client_for(port)
        reply = await client.cmd(plain(f"guess{index}@example.com", "password1"))
        replies.append(reply[:3])
        if reply.startswith("421"):
            break
    assert replies[-1] == "421", replies
    assert len(replies) < 20
    late = await client_for(port)
    assert (await late.cmd(plain(OTHER, OTHER_PASSWORD))).startswith("421 4.7.0")
