"""The dev inbox index of a running server: listing, search, envelope, retention, chaos."""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import smtplib
import threading
import time
import tracemalloc
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path

import pytest

from jdxmail.inbox import index as index_module
from jdxmail.inbox.checks import check_message
from jdxmail.inbox.index import MailboxIndex, MessageEntry
from jdxmail.inbox.message import parse_message, parse_summary
from jdxmail.queue.mailbox import delivery_head
from jdxmail.queue.spool import AcceptedMessage, Spool
from jdxmail.server.app import SmtpServerApp
from jdxmail.server.chaos import ChaosRule
from jdxmail.server.smtp import add_trace_headers
from jdxmail.settings.model import Settings
from tests.server.conftest import Client, StartServer, make_settings, port_of


def html_mail(subject: str, to: str = "dev@localhost", body: str = "Hello there") -> EmailMessage:
    """A multipart message: text, HTML (base64) and a PDF attachment."""
    message = EmailMessage()
    message["From"] = "App <app@example.com>"
    message["To"] = to
    message["Subject"] = subject
    message.set_content(body)
    message.add_alternative(f"<p>{body}</p>", subtype="html", cte="base64")
    message.add_attachment(
        b"%PDF-1.4 fake", maintype="application", subtype="pdf", filename="a.pdf"
    )
    return message


async def send(app: SmtpServerApp, message: EmailMessage, rcpts: list[str] | None = None) -> None:
    """Send *message* with smtplib (in a thread: the server runs on this loop)."""

    def go() -> None:
        with smtplib.SMTP("127.0.0.1", port_of(app)) as client:
            client.send_message(message, from_addr="bounce@example.com", to_addrs=rcpts)

    await asyncio.to_thread(go)


async def arrival(index: MailboxIndex, count: int = 1) -> list[MessageEntry]:
    """Wait until *count* more messages were announced by *index*."""
    seen: list[MessageEntry] = []
    done = asyncio.Event()

    def on(entry: MessageEntry) -> None:
        seen.append(entry)
        if len(seen) >= count:
            done.set()

    index.subscribe(on)
    await asyncio.wait_for(done.wait(), 10)
    return seen


async def serving_one_mail(start_server: StartServer, subject: str) -> SmtpServerApp:
    """A started server whose inbox lists one message, *subject*, sent to dev@localhost."""
    app = await start_server()
    assert app.inbox is not None
    await app.inbox.ready()
    waiting = asyncio.ensure_future(arrival(app.inbox))
    await send(app, html_mail(subject))
    await waiting
    return app


def with_mailbox(tmp_path: Path, **update: object) -> Settings:
    """make_settings(tmp_path) with the Mailbox section's *update* (e.g. max_messages)."""
    base = make_settings(tmp_path)
    return base.model_copy(update={"mailbox": base.mailbox.model_copy(update=update)})


def mail_files(tmp_path: Path) -> list[Path]:
    """The message files in every mailbox under *tmp_path*."""
    return list((tmp_path / "mailbox").glob("*/*.eml"))


async def settled(condition: Callable[[], bool]) -> None:
    """Wait up to ~2 s for *condition* (a watcher's or the retention's work) to hold."""
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0.01)


async def test_sent_mail_is_listed_with_envelope_and_session(start_server: StartServer) -> None:
    """A message sent with smtplib is listed newest first with its headers, envelope,
    attachment count and the SMTP session it came in on."""
    app = await start_server()
    assert app.inbox is not None
    await app.inbox.ready()
    waiting = asyncio.ensure_future(arrival(app.inbox, 2))
    await send(app, html_mail("first"))
    await send(app, html_mail("second"))
    await waiting
    page = await app.inbox.page(0, 10)
    assert page.total == 2
    assert [m.summary.subject for m in page.messages] == ["second", "first"]
    entry = page.messages[0]
    assert entry.summary.sender == "App <app@example.com>"
    assert entry.summary.to == ("dev@localhost",)
    assert entry.summary.attachments == 1
    assert entry.summary.envelope.mail_from == "bounce@example.com"
    assert entry.summary.envelope.rcpt_to == "dev@localhost"
    parsed = parse_message(await app.inbox.read(entry))
    assert parsed.session is not None
    assert parsed.session.client_address == "127.0.0.1"
    assert parsed.session.tls is False
    assert parsed.session.auth_user is None
    assert parsed.html is not None
    assert "<p>Hello there</p>" in parsed.html
    assert [(a.filename, a.content_type, a.size) for a in parsed.attachments] == [
        ("a.pdf", "application/pdf", 13)
    ]


async def test_mail_the_server_stores_is_listed_without_reading_its_file(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server's own spool hands each stored message to the inbox, which lists it
    (summary, size, attachment count) without opening the file it just wrote, and
    announces it once."""
    reads: list[str] = []
    real_load_entry = index_module._load_entry

    def counted(root: Path, folder: str, name: str) -> MessageEntry | None:
        reads.append(name)
        return real_load_entry(root, folder, name)

    monkeypatch.setattr(index_module, "_load_entry", counted)
    # a file is read only if nothing was handed over for it this long after its event
    monkeypatch.setattr(index_module, "FILED_GRACE", 60.0)
    app = await start_server()
    assert app.inbox is not None
    await app.inbox.ready()
    announced: list[str] = []
    app.inbox.subscribe(lambda entry: announced.append(entry.summary.subject))
    waiting = asyncio.ensure_future(arrival(app.inbox, 3))
    for subject in ("one", "two", "three"):
        await send(app, html_mail(subject))
    await waiting
    assert announced == ["one", "two", "three"]
    assert reads == []
    entry = next(iter(app.inbox.newest()))
    assert entry.summary.attachments == 1
    assert entry.size == app.inbox.path_of(entry).stat().st_size


async def test_search_finds_body_text_of_an_encoded_part(start_server: StartServer) -> None:
    """A search for a word only in the base64 HTML part or in To finds the message."""
    app = await start_server()
    assert app.inbox is not None
    await app.inbox.ready()
    waiting = asyncio.ensure_future(arrival(app.inbox, 2))
    await send(app, html_mail("one", body="plain words"))
    message = html_mail("two", to="qa@localhost", body="x")
    message.get_payload()[0].get_payload()[1].set_content(  # type: ignore[union-attr,index]
        "<p>zebracorn</p>", subtype="html", cte="base64"
    )
    await send(app, message)
    await waiting
    found = await app.inbox.page(0, 10, "zebracorn")
    assert [m.summary.subject for m in found.messages] == ["two"]
    assert [m.summary.subject for m in (await app.inbox.page(0, 10, "to:qa@")).messages] == ["two"]
    assert (await app.inbox.page(0, 10, 'subject:"one" plain')).total == 1
    assert (await app.inbox.page(0, 10, "nothing-like-this")).total == 0


async def test_mail_stored_by_another_process_shows_up(
    start_server: StartServer, tmp_path: Path
) -> None:
    """A message another process stores into the same mailboxes (serve --workers) is
    announced, and one removed by hand disappears from the list."""
    app = await start_server()
    assert app.inbox is not None
    await app.inbox.ready()
    waiting = asyncio.ensure_future(arrival(app.inbox))
    other = Spool(tmp_path / "spool2", tmp_path / "mailbox")
    async with other:
        await other.store(
            AcceptedMessage(
                mail_from="a@example.com",
                relay_recipients=(),
                local_recipients=("new-box@localhost",),
                data=b"Subject: from elsewhere\r\n\r\nhi\r\n",
                message_id="x1@test",
                auth_user=None,
                client_address="127.0.0.1",
                session_id="s",
                received_at=time.time(),
            )
        )
    (entry,) = await waiting
    assert entry.summary.subject == "from elsewhere"
    assert entry.folder == "new-box@localhost"
    inbox = app.inbox
    inbox.path_of(entry).unlink()
    await settled(lambda: inbox.get(entry.id) is None)
    assert app.inbox.get(entry.id) is None


async def test_max_messages_keeps_the_newest(tmp_path: Path, start_server: StartServer) -> None:
    """With Mailbox.MaxMessages 2, sending three messages leaves the two newest files."""
    settings = with_mailbox(tmp_path, max_messages=2)
    app = await start_server(settings)
    assert app.inbox is not None
    await app.inbox.ready()
    waiting = asyncio.ensure_future(arrival(app.inbox, 3))
    for n in range(3):
        await send(app, html_mail(f"m{n}"))
    await waiting
    await settled(lambda: len(mail_files(tmp_path)) == 2)
    assert len(mail_files(tmp_path)) == 2
    assert sorted(m.summary.subject for m in app.inbox.newest()) == ["m1", "m2"]


async def test_a_reload_lowering_max_messages_applies_to_the_next_mail(
    tmp_path: Path, start_server: StartServer
) -> None:
    """After a reload sets Mailbox.MaxMessages to 1, the next mail leaves one file."""
    lowered = with_mailbox(tmp_path, max_messages=1)
    app = await start_server(make_settings(tmp_path), reload_settings=lambda: lowered)
    assert app.inbox is not None
    await app.inbox.ready()
    waiting = asyncio.ensure_future(arrival(app.inbox, 2))
    for n in range(2):
        await send(app, html_mail(f"m{n}"))
    await waiting
    assert len(list((tmp_path / "mailbox").glob("*/*.eml"))) == 2
    assert app.reload()
    waiting = asyncio.ensure_future(arrival(app.inbox))
    await send(app, html_mail("m2"))
    await waiting
    await settled(lambda: len(mail_files(tmp_path)) == 1)
    assert len(mail_files(tmp_path)) == 1
    assert [m.summary.subject for m in app.inbox.newest()] == ["m2"]


async def test_ids_are_never_paths(start_server: StartServer) -> None:
    """Anything that is not a known id (path tricks included) finds nothing."""
    app = await start_server()
    assert app.inbox is not None
    for bad in ("../../etc/passwd", "dev@localhost/x.eml", "", "0" * 17, "A" * 16):
        assert app.inbox.get(bad) is None
    assert await app.inbox.delete(["../x", "/etc/passwd"]) == 0


@pytest.mark.parametrize(
    ("stage", "code", "expected"),
    [
        ("MAIL", 451, "451 4.3.0 Chaos: temporary failure injected by jdxmail, try again"),
        ("RCPT", 452, "452 4.3.1 Chaos: insufficient storage injected by jdxmail, try again"),
        ("DATA", 451, "451 4.3.0 Chaos: temporary failure injected by jdxmail, try again"),
    ],
)
async def test_chaos_answers_at_the_chosen_command(
    start_server: StartServer, stage: str, code: int, expected: str
) -> None:
    """Chaos at 100% answers the chosen command with the chosen code; off again, it
    accepts mail as usual."""
    app = await start_server()
    app.chaos.configure({stage: ChaosRule(code, 100)})
    client = await Client.connect(port_of(app))
    await client.ehlo()
    replies = [
        await client.cmd("MAIL FROM:<a@example.com>"),
        await client.cmd("RCPT TO:<dev@localhost>"),
        await client.cmd("DATA"),
    ]
    assert expected in replies
    app.chaos.configure({})
    await client.cmd("RSET")
    assert (await client.cmd("MAIL FROM:<a@example.com>")).startswith("250")


async def test_chaos_421_closes_the_connection(start_server: StartServer) -> None:
    """Chaos 421 at MAIL sends the reply and closes the connection."""
    app = await start_server()
    app.chaos.configure({"MAIL": ChaosRule(421, 100)})
    client = await Client.connect(port_of(app))
    await client.ehlo()
    assert (await client.cmd("MAIL FROM:<a@example.com>")).startswith("421 4.3.2 Chaos")
    assert await client.reader.read() == b""


def test_chaos_rule_refuses_unknown_codes() -> None:
    """Only 451, 452, 535 and 421 at 0-100 percent can be configured."""
    with pytest.raises(ValueError, match="code must be one of"):
        ChaosRule(550, 50)
    with pytest.raises(ValueError, match="0 to 100"):
        ChaosRule(451, 150)


def test_checks_find_what_mail_clients_drop() -> None:
    """The dev checks list links with their targets, images without alt, the missing
    text part and the features clients drop."""
    raw = (
        b"From: a@example.com\r\nTo: b@example.com\r\nSubject: s\r\n"
        b"Content-Type: text/html; charset=utf-8\r\n\r\n"
        b'<p style="position: fixed">Hi <a href="http://localhost:3000/reset">reset</a>'
        b' <a href="https://example.com/x">site</a><img src="https://example.com/i.png">'
        b"<script>alert(1)</script><form></form></p>\r\n"
    )
    report = check_message(parse_message(raw))
    codes = {f.code for f in report.findings}
    assert {
        "no-text-part",
        "img-alt",
        "feature-script",
        "feature-form",
        "feature-position",
    } <= codes
    assert [(link.href, link.text) for link in report.links] == [
        ("http://localhost:3000/reset", "reset"),
        ("https://example.com/x", "site"),
    ]
    assert report.links[0].problem is not None
    assert "localhost" in report.links[0].problem
    assert report.links[1].problem is None


async def test_max_age_removes_old_messages_at_start(
    tmp_path: Path, start_server: StartServer
) -> None:
    """With Mailbox.MaxAge, a message file older than that is removed when serve starts;
    a recent one stays."""
    box = tmp_path / "mailbox" / "dev@localhost"
    box.mkdir(parents=True)
    old, new = box / "old@x.eml", box / "new@x.eml"
    for path in (old, new):
        path.write_bytes(b"Subject: " + path.stem.encode() + b"\r\n\r\nx\r\n")
    two_days_ago = time.time() - 2 * 86400
    os.utime(old, (two_days_ago, two_days_ago))
    settings = with_mailbox(tmp_path, max_age=86400)
    app = await start_server(settings)
    assert app.inbox is not None
    await app.inbox.ready()
    await settled(lambda: not old.exists())
    assert not old.exists()
    assert new.exists()
    assert [m.summary.subject for m in app.inbox.newest()] == ["new@x"]


def test_summary_decodes_encoded_words_and_folded_headers() -> None:
    """Encoded-word subjects and sender names and folded headers read as the user sees
    them; a Return-Path the client sent further down is not taken as the envelope."""
    raw = (
        b"Received: from x ([127.0.0.1])\r\n\tby mx (jdxmail) with ESMTP id a.1; now\r\n"
        b"From: =?utf-8?b?SsO8cmdlbg==?= <j@example.com>\r\n"
        b"To: a@example.com,\r\n b@example.com\r\n"
        b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?= aus\r\n\tBerlin\r\n"
        b"Return-Path: <forged@evil.example>\r\n\r\nbody\r\n"
    )
    summary = parse_summary(raw)
    assert summary.sender == "Jürgen <j@example.com>"
    assert summary.to == ("a@example.com", "b@example.com")
    assert summary.subject == "Grüße aus Berlin"
    assert summary.envelope.mail_from is None


@pytest.mark.parametrize("recipients", [["a@localhost"], ["a@localhost", "b@localhost"]])
def test_session_is_read_from_our_received_header(recipients: list[str]) -> None:
    """The session (client, HELO, TLS, login, transaction id) comes from the Received
    header the server writes, with one recipient or several."""
    data, _ = add_trace_headers(
        b"Subject: s\r\n\r\nx\r\n",
        helo="laptop.test",
        client_ip="192.0.2.7",
        host_name="mx.test",
        protocol="ESMTPSA",
        transaction_id="0a1b2c3d.4",
        auth_user="bob",
        recipients=recipients,
        when=time.time(),
    )
    raw = delivery_head("app@example.com", recipients[0]) + bytes(data)
    session = parse_message(raw).session
    assert session is not None
    assert (session.client_address, session.helo, session.transaction_id) == (
        "192.0.2.7",
        "laptop.test",
        "0a1b2c3d.4",
    )
    assert session.tls is True
    assert session.auth_user == "bob"


async def test_chaos_reaches_other_processes_sharing_the_spool(
    tmp_path: Path, start_server: StartServer
) -> None:
    """Chaos set on one server (the console's worker) applies on another sharing its
    spool (another worker) once it looks at the shared rules; turned off, it is off there."""
    settings = make_settings(tmp_path)
    first = await start_server(settings)
    second = await start_server(settings)
    first.chaos.configure({"RCPT": ChaosRule(452, 100)})
    second.chaos.refresh()  # what its once-a-second look does
    client = await Client.connect(port_of(second))
    await client.ehlo()
    await client.cmd("MAIL FROM:<a@example.com>")
    assert (await client.cmd("RCPT TO:<dev@localhost>")).startswith("452 4.3.1 Chaos")
    first.chaos.configure({})
    second.chaos.refresh()
    assert (await client.cmd("RCPT TO:<dev@localhost>")).startswith("250")


async def test_a_removed_mailbox_folder_leaves_and_comes_back(
    tmp_path: Path, start_server: StartServer
) -> None:
    """Removing a recipient's folder by hand empties it from the list; the next mail to
    that recipient (a new folder) shows up again."""
    app = await serving_one_mail(start_server, "before")
    assert app.inbox is not None
    await asyncio.to_thread(shutil.rmtree, tmp_path / "mailbox" / "dev@localhost")
    inbox = app.inbox
    await settled(lambda: len(inbox) == 0)
    assert len(app.inbox) == 0
    waiting = asyncio.ensure_future(arrival(app.inbox))
    await send(app, html_mail("after"))
    (entry,) = await waiting
    assert entry.summary.subject == "after"
    assert [m.summary.subject for m in app.inbox.newest()] == ["after"]


async def test_mail_that_arrives_during_a_rescan_stays_listed_and_is_announced_once(
    tmp_path: Path, start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rescan lists the folders, then drops what its listing lacks. Mail that arrived
    while it was listing is newer than the listing: it stays in the inbox, and the
    browser hears of it once."""
    app = await serving_one_mail(start_server, "before")
    assert app.inbox is not None

    listed, release, returned = threading.Event(), threading.Event(), threading.Event()
    real_all_files = index_module._all_files

    def slow_listing(root: Path) -> set[tuple[str, str]]:
        keys = real_all_files(root)
        listed.set()
        release.wait(10)
        returned.set()
        return keys

    monkeypatch.setattr(index_module, "_all_files", slow_listing)
    # removing a folder by hand makes the index rescan (its watch is gone)
    await asyncio.to_thread(shutil.rmtree, tmp_path / "mailbox" / "dev@localhost")
    assert await asyncio.to_thread(listed.wait, 10)

    announced: list[str] = []
    app.inbox.subscribe(lambda entry: announced.append(entry.summary.subject))
    waiting = asyncio.ensure_future(arrival(app.inbox))
    await send(app, html_mail("after"))
    await waiting
    release.set()
    assert await asyncio.to_thread(returned.wait, 10)
    for _ in range(100):  # let the rescan finish with its (older) listing
        await asyncio.sleep(0.01)
    assert [m.summary.subject for m in app.inbox.newest()] == ["after"]
    assert announced == ["after"]


async def test_chaos_at_auth_answers_535(start_server: StartServer) -> None:
    """Chaos 535 at AUTH answers the login attempt with the injected failure."""
    app = await start_server()
    app.chaos.configure({"AUTH": ChaosRule(535, 100)})
    client = await Client.connect(port_of(app))
    await client.ehlo()
    reply = await client.cmd("AUTH PLAIN AHVzZXIAcGFzcw==")
    assert reply == "535 5.7.8 Chaos: authentication failure injected by jdxmail"


async def test_mail_without_a_blank_line_is_not_held_in_memory(
    start_server: StartServer,
) -> None:
    """Messages with no blank line (raw data, all of it 'header section') are listed
    without the server keeping each whole message in memory until someone looks."""
    app = await start_server()
    assert app.inbox is not None
    await app.inbox.ready()
    line = b"x" * 998 + b"\r\n"
    raw = b"Subject: raw dump\r\n" + line * 256  # ~250 KB, no blank line anywhere
    count = 12

    def go() -> None:
        with smtplib.SMTP("127.0.0.1", port_of(app)) as client:
            for _ in range(count):
                client.sendmail("dump@example.com", ["dev@localhost"], raw)

    tracemalloc.start()
    try:
        waiting = asyncio.ensure_future(arrival(app.inbox, count))
        await asyncio.to_thread(go)
        await waiting
        gc.collect()
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < count * len(raw) // 4, f"{held} bytes held for {count} messages"
    page = await app.inbox.page()
    assert [e.summary.subject for e in page.messages] == ["raw dump"] * count


async def test_a_search_of_a_big_inbox_lets_sessions_run(start_server: StartServer) -> None:
    """A search through thousands of messages nobody looked at yet gives the event loop
    back as it goes (SMTP sessions are not held up until it ends), and finds them all."""
    app = await start_server()
    assert app.inbox is not None
    await app.inbox.ready()
    folder = app.inbox.root / "dev"
    count = 3000
    for n in range(count):
        data = f"From: app@example.com\r\nSubject: note {n}\r\n\r\nbody\r\n".encode()
        app.inbox.filed(str(folder / f"{n:05d}.eml"), b"", data)
    search = asyncio.ensure_future(app.inbox.page(limit=10, query="subject:note"))
    seen_running: list[bool] = []
    # one turn after the search starts, another task gets to run before it ends
    asyncio.get_running_loop().call_soon(lambda: seen_running.append(not search.done()))
    page = await search
    assert seen_running == [True]
    assert page.total == count
    assert [e.summary.subject for e in page.messages[:2]] == ["note 2999", "note 2998"]
