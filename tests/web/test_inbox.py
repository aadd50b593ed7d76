"""The dev inbox through the console's HTTP API, against a real serve over sockets."""

from __future__ import annotations

import asyncio
import smtplib
import time
from email.message import EmailMessage
from typing import Any

import httpx
import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.web.conftest import Console, MakeConsole


def mail(
    subject: str,
    *,
    to: str = "dev@localhost",
    text: str | None = "Hello in text",
    html: str | None = "<p>Hello in <b>HTML</b></p>",
    attachment: bytes | None = None,
) -> EmailMessage:
    """A message with the given parts."""
    message = EmailMessage()
    message["From"] = "Shop <shop@example.com>"
    message["To"] = to
    message["Subject"] = subject
    if text is not None:
        message.set_content(text)
    if html is not None:
        if text is None:
            message.set_content(html, subtype="html")
        else:
            message.add_alternative(html, subtype="html")
    if attachment is not None:
        message.add_attachment(
            attachment, maintype="application", subtype="pdf", filename="invoice.pdf"
        )
    return message


async def send(console: Console, message: EmailMessage, **kwargs: Any) -> None:
    """Send *message* to the console's SMTP server with smtplib (in a thread)."""

    def go() -> None:
        with smtplib.SMTP("127.0.0.1", console.smtp_port) as client:
            client.send_message(message, **kwargs)

    await asyncio.to_thread(go)


async def wait_for(http: httpx.AsyncClient, subject: str) -> dict[str, Any]:
    """The message with *subject*, through the wait-for-message call."""
    response = await http.get("/api/v1/messages/wait", params={"subject": subject, "timeout": 10})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def test_sent_message_shows_up_in_the_api(console: Console, http: httpx.AsyncClient) -> None:
    """A message sent with smtplib is listed, readable whole, raw, with its attachment,
    envelope and session."""
    await send(console, mail("Your invoice", attachment=b"%PDF-1.4 invoice"))
    found = await wait_for(http, "Your invoice")
    listing = (await http.get("/api/v1/messages")).json()
    assert listing["total"] == 1
    assert listing["messages"][0]["id"] == found["id"]
    assert listing["messages"][0]["from"] == "Shop <shop@example.com>"
    assert listing["messages"][0]["attachments"] == 1
    full = (await http.get(f"/api/v1/messages/{found['id']}")).json()
    assert full["subject"] == "Your invoice"
    assert full["text"].strip() == "Hello in text"
    assert "<b>HTML</b>" in full["html"]
    assert full["envelope"] == {"mail_from": "shop@example.com", "rcpt_to": "dev@localhost"}
    assert full["session"]["client_address"] == "127.0.0.1"
    assert full["session"]["tls"] is False
    assert [(a["filename"], a["size"]) for a in full["attachments"]] == [("invoice.pdf", 16)]
    attachment = await http.get(full["attachments"][0]["url"])
    assert attachment.content == b"%PDF-1.4 invoice"
    assert attachment.headers["content-disposition"].startswith("attachment;")
    raw = await http.get(f"/api/v1/messages/{found['id']}/raw")
    assert b"Subject: Your invoice" in raw.content
    assert raw.headers["cache-control"] == "no-store"
    download = await http.get(f"/api/v1/messages/{found['id']}/raw", params={"download": 1})
    assert download.headers["content-type"] == "message/rfc822"
    assert f'filename="{found["id"]}.eml"' in download.headers["content-disposition"]


async def test_a_served_mail_is_listed_as_its_file_copied_in(
    console: Console, http: httpx.AsyncClient
) -> None:
    """The list shows the same sender, recipients, subject and attachment count for a
    mail the server stored (handed to the index, its headers read when first shown)
    as for the same file copied into a mailbox by hand (read from disk)."""
    message = mail("Ünïcode =?utf-8?q?and?= invoice", attachment=b"%PDF-1.4 x")
    message["Cc"] = '"Doe, Jane" <jane@example.com>, bob@example.com'
    await send(console, message, to_addrs=["dev@localhost"])
    served = await wait_for(http, "invoice")
    mailbox = console.app.settings.paths.mailbox
    (path,) = (mailbox / served["mailbox"]).glob("*.eml")
    copy = mailbox / "copied@localhost"
    copy.mkdir()
    (copy / "copy.eml").write_bytes(path.read_bytes())
    waited = await http.get(
        "/api/v1/messages/wait", params={"to": "copied@localhost", "timeout": 10}
    )
    assert waited.status_code == 200, waited.text
    listing = (await http.get("/api/v1/messages", params={"query": "invoice"})).json()
    listed = {m["mailbox"]: m for m in listing["messages"]}
    by_hand = listed["copied@localhost"]
    shown = ("from", "to", "cc", "subject", "date", "attachments", "size")
    assert {k: by_hand[k] for k in shown} == {k: listed[served["mailbox"]][k] for k in shown}
    assert by_hand["attachments"] == 1
    assert by_hand["cc"] == ["Doe, Jane <jane@example.com>", "bob@example.com"]


async def test_search_and_paging(console: Console, http: httpx.AsyncClient) -> None:
    """?query= finds a word of the body; ?start=&limit= page newest first."""
    for n in range(5):
        body = "the secret word is pineapple" if n == 2 else "nothing here"
        await send(console, mail(f"message {n}", text=body, html=None))
    await wait_for(http, "message 4")
    found = (await http.get("/api/v1/messages", params={"query": "pineapple"})).json()
    assert [m["subject"] for m in found["messages"]] == ["message 2"]
    page = (await http.get("/api/v1/messages", params={"start": 1, "limit": 2})).json()
    assert page["total"] == 5
    assert [m["subject"] for m in page["messages"]] == ["message 3", "message 2"]
    by_subject = (await http.get("/api/v1/messages", params={"query": "subject:message"})).json()
    assert by_subject["total"] == 5


async def test_wait_returns_when_mail_arrives(console: Console, http: httpx.AsyncClient) -> None:
    """A wait-for-message call made before the mail is sent returns once it arrives; one
    for a message that never comes (or came before ?since=) answers 404 after its
    timeout."""
    waiting = asyncio.ensure_future(
        http.get("/api/v1/messages/wait", params={"to": "late@localhost", "timeout": 20})
    )
    assert console.app.inbox is not None
    for _ in range(500):  # the call waits before the mail is sent
        if console.app.inbox.waiting:
            break
        await asyncio.sleep(0.01)
    assert console.app.inbox.waiting == 1
    await send(console, mail("late one", to="late@localhost"))
    response = await waiting
    assert response.status_code == 200
    assert response.json()["subject"] == "late one"
    later = await http.get(
        "/api/v1/messages/wait",
        params={"to": "late@localhost", "since": f"{time.time() + 3600:.3f}", "timeout": 0},
    )
    assert later.status_code == 404  # the one there arrived before ?since=
    bad = await http.get("/api/v1/messages/wait", params={"since": "yesterday"})
    assert bad.status_code == 400
    missing = await http.get("/api/v1/messages/wait", params={"subject": "never", "timeout": 0})
    assert missing.status_code == 404
    assert "no message matching" in missing.json()["error"]


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/messages/0123456789abcdef",
        "/api/v1/messages/..%2F..%2Fetc%2Fpasswd",
        "/api/v1/messages/%2E%2E/raw",
        "/api/v1/messages/dev@localhost/raw",
        "/inbox/0123456789abcdef",
    ],
)
async def test_unknown_ids_and_path_tricks_get_4xx(http: httpx.AsyncClient, path: str) -> None:
    """Unknown ids and path tricks get a 404, never a file."""
    response = await http.get(path)
    assert response.status_code == 404
    assert b"root:" not in response.content


async def test_unknown_attachment_is_404(console: Console, http: httpx.AsyncClient) -> None:
    """An attachment number the message does not have is a 404 JSON error."""
    await send(console, mail("no attachments"))
    found = await wait_for(http, "no attachments")
    for n in ("0", "7", "-1", "..%2F..%2Fx"):
        response = await http.get(f"/api/v1/messages/{found['id']}/attachments/{n}")
        assert response.status_code == 404
        assert "error" in response.json()


async def test_delete_one_several_all(console: Console, http: httpx.AsyncClient) -> None:
    """DELETE removes one message, a list of ids, then everything (files too)."""
    for n in range(4):
        await send(console, mail(f"d{n}"))
    await wait_for(http, "d3")
    ids = [m["id"] for m in (await http.get("/api/v1/messages")).json()["messages"]]
    assert (await http.delete(f"/api/v1/messages/{ids[0]}")).json() == {"deleted": 1}
    assert (await http.get(f"/api/v1/messages/{ids[0]}")).status_code == 404
    response = await http.request("DELETE", "/api/v1/messages", json={"ids": ids[1:3]})
    assert response.json()["deleted"] == 2
    assert (await http.get("/api/v1/messages")).json()["total"] == 1
    bad = await http.request("DELETE", "/api/v1/messages", content=b"{not json")
    assert bad.status_code == 400
    assert (await http.get("/api/v1/messages")).json()["total"] == 1
    assert (await http.delete("/api/v1/messages")).json() == {"deleted": 1}
    assert list(console.app.settings.paths.mailbox.glob("*/*.eml")) == []


async def test_checks_of_a_message(console: Console, http: httpx.AsyncClient) -> None:
    """The checks list links with targets, a missing alt, no text part, a <script>."""
    html = (
        '<p>Reset: <a href="http://localhost:8000/reset?t=1">here</a>'
        '<img src="cid:logo"><script>x()</script></p>'
    )
    await send(console, mail("checks", text=None, html=html))
    found = await wait_for(http, "checks")
    checks = (await http.get(f"/api/v1/messages/{found['id']}/checks")).json()
    codes = {f["code"] for f in checks["findings"]}
    assert {"no-text-part", "img-alt", "feature-script", "links"} <= codes
    assert checks["links"][0]["href"] == "http://localhost:8000/reset?t=1"
    assert "localhost" in checks["links"][0]["problem"]


async def test_chaos_through_the_api(console: Console, http: httpx.AsyncClient) -> None:
    """Chaos set with PUT /api/v1/chaos makes RCPT fail with 452; off again, mail goes."""
    assert (await http.get("/api/v1/chaos")).json()["active"] is False
    response = await http.put(
        "/api/v1/chaos", json={"rules": {"RCPT": {"code": 452, "probability": 100}}}
    )
    assert response.json()["rules"]["RCPT"] == {"code": 452, "probability": 100.0}
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        await send(console, mail("chaos"))
    assert refused.value.recipients["dev@localhost"][0] == 452
    bad = await http.put("/api/v1/chaos", json={"rules": {"RCPT": {"code": 550, "probability": 5}}})
    assert bad.status_code == 400
    assert "code must be one of" in bad.json()["error"]
    await http.put("/api/v1/chaos", json={"rules": {}})
    await send(console, mail("after chaos"))
    assert (await wait_for(http, "after chaos"))["subject"] == "after chaos"


class _Recorder:
    """An aiosmtpd handler keeping what it received."""

    def __init__(self) -> None:
        self.received: list[tuple[str, list[str], bytes]] = []
        self.arrived = asyncio.Event()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        self.received.append((envelope.mail_from or "", list(envelope.rcpt_tos), content))
        self.arrived.set()
        return "250 2.0.0 OK upstream"


async def test_release_reaches_the_relay(make_console: MakeConsole) -> None:
    """Releasing a caught message sends it through the configured relay to the typed
    address, without the mailbox's envelope lines."""
    recorder = _Recorder()
    loop = asyncio.get_running_loop()
    upstream = await loop.create_server(
        lambda: SMTP(recorder, hostname="upstream.test"), "127.0.0.1", 0
    )
    port = upstream.sockets[0].getsockname()[1]
    config = (
        '{"SmtpServer": {"BindAddress": "127.0.0.1", "HostName": "mx.test",'
        ' "TrustedNetworks": ["127.0.0.0/8"]},'
        f' "RelayServer": {{"Host": "127.0.0.1", "Port": {port}, "UseTls": false}}}}'
    )
    console = await make_console(config)
    try:
        async with httpx.AsyncClient(base_url=console.url, timeout=10) as http:
            await send(console, mail("release me"))
            found = await wait_for(http, "release me")
            bad = await http.post(
                f"/api/v1/messages/{found['id']}/release", json={"to": "not an address"}
            )
            assert bad.status_code == 400
            response = await http.post(
                f"/api/v1/messages/{found['id']}/release", json={"to": ["boss@example.net"]}
            )
            assert response.status_code == 202, response.text
        await asyncio.wait_for(recorder.arrived.wait(), 20)
        mail_from, rcpts, content = recorder.received[0]
        assert rcpts == ["boss@example.net"]
        assert mail_from == "shop@example.com"
        assert b"Subject: release me" in content
        assert b"Delivered-To:" not in content
    finally:
        upstream.close()


async def test_release_without_relay_says_why(console: Console, http: httpx.AsyncClient) -> None:
    """With no relay configured, release answers 409 naming the fix."""
    await send(console, mail("stuck"))
    found = await wait_for(http, "stuck")
    response = await http.post(f"/api/v1/messages/{found['id']}/release", json={"to": ["a@b.c"]})
    assert response.status_code == 409
    assert "RelayServer" in response.json()["fix"]


async def test_html_frame_policy_and_inline_images(
    console: Console, http: httpx.AsyncClient
) -> None:
    """The HTML frame forbids scripts and remote content (unless ?remote=1) and shows the
    mail's own cid: images inline."""
    message = mail("with logo", html='<p>Hi</p><img src="cid:logo@shop" alt="logo">')
    html_part = message.get_payload()[1]  # type: ignore[index]
    html_part.add_related(  # type: ignore[union-attr]
        b"\x89PNG\r\n\x1a\nfake", maintype="image", subtype="png", cid="<logo@shop>"
    )
    await send(console, message)
    found = await wait_for(http, "with logo")
    frame = await http.get(f"/inbox/{found['id']}/html")
    policy = frame.headers["content-security-policy"]
    assert "script-src 'none'" in policy
    assert "sandbox" in policy
    assert "img-src 'self' data:;" in policy
    assert 'src="data:image/png;base64,iVBORw0KGgpmYWtl"' in frame.text
    remote = await http.get(f"/inbox/{found['id']}/html", params={"remote": "1"})
    assert "img-src 'self' data: http: https:" in remote.headers["content-security-policy"]
    assert "script-src 'none'" in remote.headers["content-security-policy"]
