"""The SMTP dialogue as clients see it: banner, EHLO, sequence, syntax, limits."""

from __future__ import annotations

import asyncio
import logging
import smtplib
from pathlib import Path

import aiosmtplib
import pytest

from tests.conftest import BOTH_LOOPS
from tests.server.conftest import Client, StartServer, port_of, user_entry

pytestmark = BOTH_LOOPS  # on uvloop too (serve --loop)


async def test_banner_ehlo_quit_as_in_the_guide(start_server: StartServer) -> None:
    """The banner names the host, EHLO lists the extensions, QUIT says 221 2.0.0 Bye."""
    app = await start_server(Users=[user_entry()])
    client = await Client.connect(port_of(app), banner=False)
    assert await client.line() == "220 mx.test ESMTP jdxmail SMTP Server Ready"
    keywords = await client.ehlo("localhost")
    assert keywords == [
        "AUTH PLAIN LOGIN",
        "SIZE 26214400",
        "8BITMIME",
        "PIPELINING",
        "ENHANCEDSTATUSCODES",
        "CHUNKING",
        "SMTPUTF8",
    ]
    assert await client.cmd("QUIT") == "221 2.0.0 Bye"
    assert await client.closed()


async def test_ehlo_without_users_offers_no_auth(start_server: StartServer) -> None:
    """With no users configured AUTH is neither offered nor accepted."""
    app = await start_server()
    client = await Client.connect(port_of(app))
    assert not any(k.startswith("AUTH") for k in await client.ehlo())
    assert await client.cmd("AUTH PLAIN AHUAcA==") == (
        "502 5.5.1 AUTH not available: this server has no users"
    )


async def test_helo_noop_rset_vrfy_help(start_server: StartServer) -> None:
    """The simple commands answer with their RFC codes."""
    app = await start_server()
    client = await Client.connect(port_of(app))
    assert await client.cmd("HELO client") == "250 mx.test"
    assert await client.cmd("NOOP") == "250 2.0.0 OK"
    assert await client.cmd("RSET") == "250 2.0.0 Reset OK"
    assert await client.cmd("VRFY bob") == (
        "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery"
    )
    assert (await client.cmd("HELP")).startswith("214 2.0.0 Commands:")
    assert await client.cmd("EXPN list") == "502 5.5.1 Command not implemented"
    assert await client.cmd("HELO") == "501 5.5.4 Syntax: HELO hostname"


async def test_sequence_errors(start_server: StartServer) -> None:
    """MAIL before EHLO, RCPT before MAIL, DATA before RCPT and a second MAIL get 503."""
    app = await start_server()
    client = await Client.connect(port_of(app))
    assert await client.cmd("MAIL FROM:<a@localhost>") == "503 5.5.1 Send EHLO or HELO first"
    await client.ehlo()
    assert await client.cmd("RCPT TO:<b@localhost>") == "503 5.5.1 Send MAIL first"
    assert await client.cmd("DATA") == "503 5.5.1 Send MAIL first"
    assert await client.cmd("MAIL FROM:<a@localhost>") == "250 2.1.0 Sender OK"
    assert await client.cmd("DATA") == "503 5.5.1 Send RCPT first"
    assert await client.cmd("MAIL FROM:<a@localhost>") == (
        "503 5.5.1 Sender already given; send RSET to start over"
    )


@pytest.mark.parametrize(
    ("command", "reply"),
    [
        ("FOO bar", "500 5.5.2 Command not recognized"),
        ("M@IL FROM:<a@b>", "500 5.5.2 Command not recognized"),
        ("MAIL TO:<a@localhost>", "501 5.5.4 Syntax: MAIL FROM:<address> [parameters]"),
        ("MAIL FROM:", "501 5.5.4 Syntax: MAIL FROM:<address> [parameters]"),
        ("MAIL FROM:<a@localhost", "553 5.1.3 Malformed address: missing >"),
        ("MAIL FROM:<no-domain>", "553 5.1.3 Malformed address: no domain"),
        ("MAIL FROM:<a..b@localhost>", "553 5.1.3 Malformed address: bad local part"),
        ("MAIL FROM:<a@exa mple.com>", "553 5.1.3 Malformed address: bad domain"),
        ("MAIL FROM:<a@-bad-.com>", "553 5.1.3 Malformed address: bad domain"),
        ("MAIL FROM:<a@localhost>x", "501 5.5.4 Syntax: MAIL FROM:<address> [parameters]"),
        ("MAIL FROM:<a@localhost> FOO=1", "555 5.5.4 Parameter not recognized: FOO"),
        ("MAIL FROM:<a@localhost> SIZE=abc", "501 5.5.4 Invalid parameter value: SIZE"),
        ("MAIL FROM:<a@localhost> SIZE=", "501 5.5.4 Invalid parameter value: SIZE"),
        ("MAIL FROM:<a@localhost> BODY=9BIT", "501 5.5.4 Invalid parameter value: BODY"),
        ("MAIL FROM:<a@localhost> =x", "501 5.5.4 Invalid parameter value: ?"),
        ("MAIL FROM:<jöe@localhost>", "553 5.6.7 Non-ASCII address needs the SMTPUTF8 parameter"),
        ('MAIL FROM:<"odd>name"@localhost> SIZE=10', "250 2.1.0 Sender OK"),
        ('MAIL FROM:<"a\\"b>"@localhost> SIZE=x', "501 5.5.4 Invalid parameter value: SIZE"),
        (
            "MAIL FROM:<a@localhost> SIZE=99999999999",
            "552 5.3.4 Message too big (limit 26214400 bytes)",
        ),
    ],
)
async def test_malformed_mail_commands_get_rfc_replies(
    start_server: StartServer, command: str, reply: str
) -> None:
    """Malformed commands, addresses and parameters get the RFC reply; the session goes on."""
    app = await start_server()
    client = await Client.connect(port_of(app))
    await client.ehlo()
    assert await client.cmd(command) == reply
    assert await client.cmd("NOOP") == "250 2.0.0 OK"


async def test_bad_bytes_never_crash_a_session(start_server: StartServer) -> None:
    """Invalid UTF-8, NUL bytes, a bare CR and a too-long line get 500 and the session lives."""
    app = await start_server()
    client = await Client.connect(port_of(app))
    client.send(b"EHLO \xff\xfe\r\n")
    assert await client.line() == "500 5.5.2 Command is not valid UTF-8"
    client.send(b"NOOP\rRSET\r\n")
    assert await client.line() == "500 5.5.2 Command must end with CRLF"
    client.send(b"\x00\x01\x02\r\n")
    assert await client.line() == "500 5.5.2 Command not recognized"
    client.send(b"NOOP " + b"x" * 600 + b"\r\n")
    assert await client.line() == "500 5.5.6 Line too long (limit 512 bytes)"
    client.send(b"NOOP " + b"y" * 300_000 + b"\r\n")
    assert await client.line() == "500 5.5.6 Line too long (limit 512 bytes)"
    assert await client.cmd("MAIL FROM:<\x01@x>") == "503 5.5.1 Send EHLO or HELO first"
    await client.ehlo()
    assert await client.cmd("MAIL FROM:<a\x01b@localhost>") == (
        "553 5.1.3 Malformed address: control character"
    )
    assert await client.cmd("NOOP") == "250 2.0.0 OK"


async def test_too_many_bad_commands_disconnects(start_server: StartServer) -> None:
    """After ten unrecognized commands the server says 421 and hangs up."""
    app = await start_server()
    client = await Client.connect(port_of(app))
    for _ in range(9):
        assert (await client.cmd("XYZZY")).startswith("500")
    client.send("XYZZY\r\n")
    assert await client.line() == "500 5.5.2 Command not recognized"
    assert await client.line() == "421 4.7.0 mx.test Too many bad commands, closing connection"
    assert await client.closed()


async def test_smtputf8_address_accepted_with_parameter(
    start_server: StartServer, tmp_path: Path
) -> None:
    """A UTF-8 address is accepted with SMTPUTF8 and the mail is stored for it."""
    app = await start_server()
    client = await Client.connect(port_of(app))
    await client.ehlo()
    assert await client.cmd("MAIL FROM:<jöe@localhost> SMTPUTF8") == "250 2.1.0 Sender OK"
    assert await client.cmd("RCPT TO:<ünï@localhost>") == "250 2.1.5 Recipient OK"
    assert await client.cmd("DATA") == "354 End data with <CR><LF>.<CR><LF>"
    client.send("Subject: ö\r\n\r\nhi\r\n.\r\n")
    assert (await client.line()).startswith("250 2.0.0 OK: queued as ")
    assert len(list((tmp_path / "mailbox").glob("*/*.eml"))) == 1


async def test_max_recipients(start_server: StartServer) -> None:
    """Past MaxRecipients each further RCPT gets 452 4.5.3; the accepted ones still work."""
    app = await start_server(MaxRecipients=2)
    client = await Client.connect(port_of(app))
    await client.ehlo()
    await client.cmd("MAIL FROM:<a@localhost>")
    assert await client.cmd("RCPT TO:<b1@localhost>") == "250 2.1.5 Recipient OK"
    assert await client.cmd("RCPT TO:<b2@localhost>") == "250 2.1.5 Recipient OK"
    assert await client.cmd("RCPT TO:<b3@localhost>") == "452 4.5.3 Too many recipients (limit 2)"
    assert (await client.cmd("DATA")).startswith("354")
    client.send("Subject: x\r\n\r\nbody\r\n.\r\n")
    assert (await client.line()).startswith("250 2.0.0")


async def test_pipelined_transaction_gets_replies_in_order(start_server: StartServer) -> None:
    """A whole pipelined transaction in one packet gets every reply, in order."""
    app = await start_server()
    client = await Client.connect(port_of(app))
    await client.ehlo()
    client.send(
        "MAIL FROM:<a@localhost>\r\nRCPT TO:<b@localhost>\r\nRCPT TO:<c@localhost>\r\nDATA\r\n"
    )
    assert [await client.line() for _ in range(4)] == [
        "250 2.1.0 Sender OK",
        "250 2.1.5 Recipient OK",
        "250 2.1.5 Recipient OK",
        "354 End data with <CR><LF>.<CR><LF>",
    ]
    client.send("Subject: p\r\n\r\nbody\r\n.\r\nNOOP\r\nQUIT\r\n")
    assert (await client.line()).startswith("250 2.0.0 OK: queued as")
    assert await client.line() == "250 2.0.0 OK"
    assert await client.line() == "221 2.0.0 Bye"


async def test_max_connections_excess_gets_421(start_server: StartServer) -> None:
    """A connection over MaxConnections gets 421 4.7.0 at once; the others keep working."""
    app = await start_server(MaxConnections=2)
    port = port_of(app)
    first = await Client.connect(port)
    second = await Client.connect(port)
    third = await Client.connect(port, banner=False)
    assert await third.line() == "421 4.7.0 mx.test Too many connections, try again later"
    assert await third.closed()
    assert await first.cmd("NOOP") == "250 2.0.0 OK"
    await second.cmd("QUIT")
    assert await second.closed()
    fourth = await Client.connect(port)
    assert await fourth.cmd("NOOP") == "250 2.0.0 OK"


async def test_idle_client_times_out(start_server: StartServer) -> None:
    """A client idle for TimeOut seconds gets 421 4.4.2 and is disconnected."""
    app = await start_server(TimeOut=1)
    client = await Client.connect(port_of(app))
    assert await client.line() == (
        "421 4.4.2 mx.test Timeout waiting for a command, closing connection"
    )
    assert await client.closed()


async def test_timeout_counts_silence_not_session_age(start_server: StartServer) -> None:
    """A client that keeps talking stays connected well past TimeOut; silence ends it."""
    app = await start_server(TimeOut=1)
    client = await Client.connect(port_of(app))
    for _ in range(6):  # 2.4 s in all, never silent for 1 s
        await asyncio.sleep(0.4)
        assert await client.cmd("NOOP") == "250 2.0.0 OK"
    assert await client.line() == (
        "421 4.4.2 mx.test Timeout waiting for a command, closing connection"
    )


def test_smtplib_debug_session_like_the_guide(tmp_path: Path) -> None:
    """The guide's smtplib session with set_debuglevel(1) logs in and sends (sync client)."""
    import asyncio
    import threading

    from jdxmail.server.app import SmtpServerApp
    from tests.server.conftest import make_settings

    ready = threading.Event()
    started: list[tuple[asyncio.AbstractEventLoop, SmtpServerApp]] = []

    def run_server() -> None:
        async def main() -> None:
            app = SmtpServerApp(
                make_settings(tmp_path, Users=[user_entry()]), port=0, auth_failure_delay=0
            )
            await app.start()
            started.append((asyncio.get_running_loop(), app))
            ready.set()
            await app.serve()

        asyncio.run(main())

    thread = threading.Thread(target=run_server)
    thread.start()
    try:
        assert ready.wait(10)
        _, app = started[0]
        server = smtplib.SMTP("localhost", port_of(app), timeout=10)
        server.set_debuglevel(1)
        server.login("test@example.com", "password")
        refused = server.sendmail(
            "test@example.com", ["dev@localhost"], "Subject: guide\r\n\r\nhello\r\n"
        )
        server.quit()
    finally:
        if started:
            started[0][0].call_soon_threadsafe(started[0][1].request_stop)
        thread.join(10)
    assert refused == {}
    assert [p.parent.name for p in (tmp_path / "mailbox").glob("*/*.eml")] == ["dev@localhost"]


async def test_aiosmtplib_client_sends(start_server: StartServer, tmp_path: Path) -> None:
    """aiosmtplib logs in and sends a message; it lands in the recipient's mailbox."""
    app = await start_server(Users=[user_entry()])
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port_of(app), start_tls=False) as smtp:
        await smtp.login(user_entry()["UserName"], "password")
        errors, reply = await smtp.sendmail(
            "test@example.com", ["x@localhost"], b"Subject: a\r\n\r\nbody\r\n"
        )
    assert errors == {}
    assert reply.startswith("2.0.0 OK: queued as")
    files = list((tmp_path / "mailbox" / "x@localhost").glob("*.eml"))
    assert len(files) == 1
    assert b"(authenticated user test@example.com)" in files[0].read_bytes()


async def test_random_garbage_never_crashes_a_session(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Hundreds of random command lines get SMTP replies; no session fails, mail still flows."""
    import random

    rng = random.Random(20261130)  # noqa: S311 - seeded, so a failure can be replayed
    verbs = ["EHLO", "HELO", "MAIL", "RCPT", "RSET", "NOOP", "VRFY", "AUTH", "HELP", "XYZ", ""]
    pieces = ["FROM:", "TO:", "<", ">", "@", " ", "=", "SIZE", "BODY", '"', "\\", "PLAIN", "LOGIN"]
    app = await start_server(Users=[user_entry()], TrustedNetworks=[])
    client = await Client.connect(port_of(app))
    codes: set[int] = set()
    for _ in range(600):
        arg = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 6)))
        noise = bytes(rng.randint(0, 255) for _ in range(rng.randint(0, 8)))
        line = (rng.choice(verbs) + " " + arg).encode() + noise.replace(b"\n", b"")
        client.send(line.replace(b"\r", b"") + b"\r\n")
        try:
            code, _ = await client.reply()
        except ConnectionError:
            client = await Client.connect(port_of(app))
            continue
        codes.add(code)
        if code == 421:
            assert await client.closed()
            client = await Client.connect(port_of(app))
    assert codes <= {214, 235, 250, 252, 334, 421, 500, 501, 502, 503, 504, 530, 535, 553, 555}
    assert {250, 500, 501, 503}.issubset(codes)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    fresh = await Client.connect(port_of(app))
    await fresh.ehlo()
    assert await fresh.cmd("MAIL FROM:<a@localhost>") == "250 2.1.0 Sender OK"


async def test_half_closed_client_still_gets_every_reply(start_server: StartServer) -> None:
    """A client that sends a whole session and then shuts its side (nc -N) gets all replies."""
    app = await start_server()
    client = await Client.connect(port_of(app))
    client.send(
        "EHLO nc\r\nMAIL FROM:<a@localhost>\r\nRCPT TO:<b@localhost>\r\nDATA\r\n"
        "Subject: nc\r\n\r\nhi\r\n.\r\nQUIT\r\n"
    )
    client.writer.write_eof()
    assert (await client.reply())[0] == 250
    replies = [await client.line() for _ in range(5)]
    assert replies[:3] == [
        "250 2.1.0 Sender OK",
        "250 2.1.5 Recipient OK",
        "354 End data with <CR><LF>.<CR><LF>",
    ]
    assert replies[3].startswith("250 2.0.0 OK: queued as")
    assert replies[4] == "221 2.0.0 Bye"
    assert await client.closed()


async def test_half_closed_client_without_quit_is_closed(start_server: StartServer) -> None:
    """A client that shuts its side without QUIT gets its replies, then the server closes."""
    app = await start_server()
    client = await Client.connect(port_of(app))
    client.send("NOOP\r\nNOOP")
    client.writer.write_eof()
    assert await client.line() == "250 2.0.0 OK"
    assert await client.closed()


@pytest.mark.parametrize(
    ("path", "stored_as"),
    [
        ('<"john smith"@localhost>', '"john smith"@localhost'),
        ('<"a>b"@localhost>', '"a>b"@localhost'),
        ("<@relay.example,@other.example:user@localhost>", "user@localhost"),
        ("user@localhost", "user@localhost"),
        ("<user@[127.0.0.1]>", "user@[127.0.0.1]"),
        ("<Postmaster>", "Postmaster"),
    ],
)
async def test_unusual_but_valid_recipients_are_accepted(
    start_server: StartServer, path: str, stored_as: str
) -> None:
    """Quoted local parts, source routes, bare addresses, literals and postmaster work."""
    from tests.server.test_data import RecordingStore

    store = RecordingStore()
    app = await start_server(store=store, TrustedNetworks=["127.0.0.1/32"])
    client = await Client.connect(port_of(app))
    await client.ehlo()
    assert await client.cmd("MAIL FROM:<a@localhost>") == "250 2.1.0 Sender OK"
    assert await client.cmd(f"RCPT TO:{path}") == "250 2.1.5 Recipient OK"
    assert (await client.cmd("DATA")).startswith("354")
    client.send("Subject: x\r\n\r\ny\r\n.\r\n")
    assert (await client.line()).startswith("250 2.0.0")
    assert store.messages[0].local_recipients + store.messages[0].relay_recipients == (stored_as,)
