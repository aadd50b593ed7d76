"""AUTH PLAIN and LOGIN as the guide's users type them, failures, throttling, senders."""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import pytest

from jdxmail.passwords import HashType, hash_password
from tests.conftest import BOTH_LOOPS
from tests.server.conftest import PASSWORD, USER, Client, StartServer, port_of, user_entry

pytestmark = BOTH_LOOPS  # on uvloop too (serve --loop)


def b64(text: str) -> str:
    """Base64 of UTF-8 *text*, as `echo -n text | base64` prints it."""
    return base64.b64encode(text.encode()).decode()


async def logged_in_client(app_port: int) -> Client:
    """A client that has said EHLO."""
    client = await Client.connect(app_port)
    await client.ehlo()
    return client


async def test_auth_login_exactly_as_the_guide_telnet_session(start_server: StartServer) -> None:
    """AUTH LOGIN prompts VXNlcm5hbWU6 / UGFzc3dvcmQ6 and answers 235 2.7.0."""
    app = await start_server(Users=[user_entry()])
    client = await logged_in_client(port_of(app))
    assert await client.cmd("AUTH LOGIN") == "334 VXNlcm5hbWU6"
    assert await client.cmd("dGVzdEBleGFtcGxlLmNvbQ==") == "334 UGFzc3dvcmQ6"
    assert await client.cmd("cGFzc3dvcmQ=") == "235 2.7.0 Authentication successful"
    assert await client.cmd("MAIL FROM:<test@example.com>") == "250 2.1.0 Sender OK"
    assert await client.cmd("RCPT TO:<far@elsewhere.example>") == "250 2.1.5 Recipient OK"


async def test_auth_login_with_initial_username(start_server: StartServer) -> None:
    """AUTH LOGIN with the user name on the command line asks only for the password."""
    app = await start_server(Users=[user_entry()])
    client = await logged_in_client(port_of(app))
    assert await client.cmd(f"AUTH LOGIN {b64(USER)}") == "334 UGFzc3dvcmQ6"
    assert await client.cmd(b64(PASSWORD)) == "235 2.7.0 Authentication successful"


@pytest.mark.parametrize("hash_type", [HashType.SHA256, HashType.SHA512, HashType.SCRYPT])
async def test_auth_plain_initial_response(start_server: StartServer, hash_type: HashType) -> None:
    """AUTH PLAIN with an initial response works for SHA256, SHA512 and scrypt users."""
    app = await start_server(Users=[user_entry(hash_type=hash_type)])
    client = await logged_in_client(port_of(app))
    token = b64(f"\0{USER}\0{PASSWORD}")
    assert await client.cmd(f"AUTH PLAIN {token}") == "235 2.7.0 Authentication successful"


async def test_auth_plain_without_initial_response(start_server: StartServer) -> None:
    """AUTH PLAIN alone gets an empty 334 challenge, then the credentials."""
    app = await start_server(Users=[user_entry()])
    client = await logged_in_client(port_of(app))
    assert await client.cmd("AUTH PLAIN") == "334 "
    assert await client.cmd(b64(f"{USER}\0{USER}\0{PASSWORD}")) == (
        "235 2.7.0 Authentication successful"
    )
    assert await client.cmd("AUTH PLAIN") == "503 5.5.1 Already authenticated"


@pytest.mark.parametrize(
    ("lines", "reply"),
    [
        (["AUTH PLAIN " + b64(f"\0{USER}\0wrong")], "535 5.7.8 Authentication credentials invalid"),
        (
            ["AUTH PLAIN " + b64(f"\0nobody@x\0{PASSWORD}")],
            "535 5.7.8 Authentication credentials invalid",
        ),
        (
            ["AUTH PLAIN " + b64(f"someone-else\0{USER}\0{PASSWORD}")],
            "535 5.7.8 Authentication credentials invalid",
        ),
        (["AUTH PLAIN not!base64"], "501 5.5.2 Cannot decode base64"),
        (
            ["AUTH PLAIN " + b64("no-nul-bytes")],
            "501 5.5.2 AUTH PLAIN needs authzid NUL user NUL password",
        ),
        (["AUTH LOGIN", "test@example.com"], "501 5.5.2 Cannot decode base64"),
        (["AUTH LOGIN", "*"], "501 5.7.0 Authentication cancelled"),
        (["AUTH PLAIN", "*"], "501 5.7.0 Authentication cancelled"),
        (["AUTH LOGIN", b64(USER), "*"], "501 5.7.0 Authentication cancelled"),
        (["AUTH CRAM-MD5"], "504 5.5.4 Unrecognized authentication type"),
        (["AUTH"], "501 5.5.4 Syntax: AUTH mechanism [initial-response]"),
        (["AUTH PLAIN a b"], "501 5.5.4 Syntax: AUTH mechanism [initial-response]"),
    ],
)
async def test_auth_failures(start_server: StartServer, lines: list[str], reply: str) -> None:
    """Wrong credentials, bad base64, a cancelled exchange and bad syntax get RFC 4954 replies."""
    app = await start_server(Users=[user_entry()])
    client = await logged_in_client(port_of(app))
    for line in lines[:-1]:
        assert (await client.cmd(line)).startswith("334 ")
    assert await client.cmd(lines[-1]) == reply
    assert await client.cmd("NOOP") == "250 2.0.0 OK"


async def test_auth_needs_ehlo_and_is_refused_inside_a_transaction(
    start_server: StartServer,
) -> None:
    """AUTH before a greeting, after HELO, and after MAIL get 503 with the reason."""
    app = await start_server(Users=[user_entry()])
    client = await Client.connect(port_of(app))
    token = b64(f"\0{USER}\0{PASSWORD}")
    assert await client.cmd(f"AUTH PLAIN {token}") == "503 5.5.1 Send EHLO or HELO first"
    await client.cmd("HELO client.example")
    assert await client.cmd(f"AUTH PLAIN {token}") == "503 5.5.1 AUTH needs EHLO (not HELO) first"
    await client.ehlo()
    await client.cmd("MAIL FROM:<a@localhost>")
    assert await client.cmd(f"AUTH PLAIN {token}") == (
        "503 5.5.1 AUTH is not allowed during a mail transaction"
    )


async def test_stored_hash_sent_as_password_logs_the_d2_hint(
    start_server: StartServer, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """Logging in with the stored hash fails with 535 and logs the JDX-D2 hint, never the hash."""
    app = await start_server(Users=[user_entry()])
    stored = hash_password(PASSWORD)
    client = await logged_in_client(port_of(app))
    with caplog.at_level(logging.INFO, logger="jdxmail"):
        reply = await client.cmd("AUTH PLAIN " + b64(f"\0{USER}\0{stored}"))
    assert reply == "535 5.7.8 Authentication credentials invalid"
    text = caplog.text
    assert "JDX-D2" in text
    assert "instead of the password" in text
    assert stored not in text
    assert b64(f"\0{USER}\0{stored}") not in text


async def test_failed_logins_are_throttled_per_address(start_server: StartServer) -> None:
    """After AuthFailureLimit failures of a user the client gets 421 4.7.0, and so does its
    next try as that user."""
    app = await start_server(Users=[user_entry()], AuthFailureLimit=3)
    client = await logged_in_client(port_of(app))
    bad = "AUTH PLAIN " + b64(f"\0{USER}\0nope")
    assert (await client.cmd(bad)).startswith("535 5.7.8")
    assert (await client.cmd(bad)).startswith("535 5.7.8")
    assert await client.cmd(bad) == (
        "421 4.7.0 Too many failed logins for this user from your address; try again later"
    )
    assert await client.closed()
    again = await logged_in_client(port_of(app))
    good = "AUTH PLAIN " + b64(f"\0{USER}\0{PASSWORD}")
    assert (await again.cmd(good)).startswith("421 4.7.0")
    assert await again.closed()


async def test_allowed_senders(start_server: StartServer) -> None:
    """A user with AllowedSenders may send as itself and listed addresses only (553 5.7.1)."""
    app = await start_server(
        Users=[user_entry(AllowedSenders=["alias@example.com", "@apps.example.com"])]
    )
    client = await logged_in_client(port_of(app))
    assert (await client.cmd("AUTH PLAIN " + b64(f"\0{USER}\0{PASSWORD}"))).startswith("235")
    for allowed in ("test@example.com", "ALIAS@example.com", "cron@apps.example.com"):
        assert await client.cmd(f"MAIL FROM:<{allowed}>") == "250 2.1.0 Sender OK"
        assert await client.cmd("RSET") == "250 2.0.0 Reset OK"
    assert await client.cmd("MAIL FROM:<boss@example.com>") == (
        "553 5.7.1 Sender address not allowed for user test@example.com"
    )


async def test_relay_needs_auth_when_not_trusted(start_server: StartServer) -> None:
    """Without login and outside TrustedNetworks a remote recipient gets 530 5.7.0."""
    app = await start_server(Users=[user_entry()], TrustedNetworks=[])
    client = await logged_in_client(port_of(app))
    assert await client.cmd("MAIL FROM:<a@example.com>") == "250 2.1.0 Sender OK"
    assert await client.cmd("RCPT TO:<b@localhost>") == "250 2.1.5 Recipient OK"
    assert await client.cmd("RCPT TO:<b@mx.test>") == "250 2.1.5 Recipient OK"
    assert await client.cmd("RCPT TO:<victim@gmail.com>") == "530 5.7.0 Authentication required"


async def test_trusted_network_may_relay_without_auth(start_server: StartServer) -> None:
    """A client in TrustedNetworks may send to any domain without logging in."""
    app = await start_server(TrustedNetworks=["127.0.0.0/8"])
    client = await logged_in_client(port_of(app))
    await client.cmd("MAIL FROM:<a@example.com>")
    assert await client.cmd("RCPT TO:<someone@gmail.com>") == "250 2.1.5 Recipient OK"
