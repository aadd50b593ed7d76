"""8-bit mail for a relay without 8BITMIME (RFC 6152): a 7bit copy, or a bounce."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from tests.queue.conftest import (
    RunEngine,
    StartUpstream,
    UpstreamSpec,
    message,
    relay_for,
    settings_for,
)

from jdxmail.data_encoding import has_bare_line_ending
from jdxmail.queue.eightbit import to_7bit
from jdxmail.queue.mailbox import mailbox_dir_for
from jdxmail.queue.spool import AcceptedMessage, spool_stats
from jdxmail.settings.model import DeliverySettings

BOTH_WAYS = pytest.mark.parametrize(
    "upstream_pipelining", [False, True], ids=["serial", "pipelined"]
)

TEXT = "Grüße aus Köln — 8-bit text\r\n.a line that starts with a dot\r\n"
BLOB = b"\r\n".join([bytes(b for b in range(1, 256) if b not in (10, 13))] * 4)


def parse(data: bytes) -> EmailMessage:
    """*data* as a message (modern policy)."""
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def eight_bit_message(sender: str = "alice@example.com") -> AcceptedMessage:
    """A multipart message: an 8-bit UTF-8 text part, an 8-bit binary part, and a
    header with raw UTF-8."""
    data = (
        (
            f"From: <{sender}>\r\nTo: <bob@example.net>\r\nSubject: Grüße\r\n"
            "Message-ID: <m1@jdx.test>\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
            "--b1\r\nContent-Type: text/plain; charset=utf-8\r\n"
            "Content-Transfer-Encoding: 8bit\r\n\r\n"
        ).encode()
        + TEXT.encode()
        + (
            b"--b1\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Transfer-Encoding: binary\r\n\r\n"
            + BLOB
            + b"\r\n--b1\r\nContent-Type: text/plain\r\n\r\nseven bit only\r\n--b1--\r\n"
        )
    )
    base = message(sender=sender)
    fields = {f: getattr(base, f) for f in base.__slots__}
    return AcceptedMessage(**{**fields, "data": data})


@BOTH_WAYS
async def test_eight_bit_mail_is_converted_for_a_relay_without_8bitmime(
    tmp_path: Path, upstream_factory: StartUpstream, run_engine: RunEngine
) -> None:
    """A relay that offers no 8BITMIME gets a 7bit copy: the 8-bit parts as
    quoted-printable / base64, decoding to exactly what was sent, CRLF line endings
    only; no BODY=8BITMIME."""
    upstream = await upstream_factory(UpstreamSpec(eight_bit_mime=False))
    running = await run_engine(settings_for(tmp_path, relay_for(upstream)))
    await running.spool.store(eight_bit_message())
    await upstream.wait_for(1)
    await running.engine.wait_idle()
    got = upstream.received[0]
    assert got.data.isascii()
    assert not has_bare_line_ending(got.data)
    assert not any(o.upper().startswith("BODY=") for o in got.mail_options)
    sent = parse(got.data)
    assert sent["Subject"] == "Grüße"
    text, blob, plain = (p for p in sent.walk() if not p.is_multipart())
    assert text["Content-Transfer-Encoding"] == "quoted-printable"
    # (the CRLF before a boundary belongs to the boundary, RFC 2046 §5.1.1)
    assert text.get_content().replace("\r\n", "\n") == TEXT.removesuffix("\r\n").replace(
        "\r\n", "\n"
    )
    assert blob["Content-Transfer-Encoding"] == "base64"
    assert blob.get_payload(decode=True) == BLOB
    assert plain.get_content() == "seven bit only"
    assert spool_stats(running.spool.spool_dir).queued == 0


async def test_later_messages_are_converted_without_a_refused_try(
    tmp_path: Path, upstream_factory: StartUpstream, run_engine: RunEngine
) -> None:
    """Once the relay's EHLO is known, the next 8-bit message goes out converted at once,
    on the same session."""
    upstream = await upstream_factory(UpstreamSpec(eight_bit_mime=False))
    running = await run_engine(settings_for(tmp_path, relay_for(upstream)))
    for count in (1, 2):
        await running.spool.store(eight_bit_message())
        await upstream.wait_for(count)
        await running.engine.wait_idle()
    assert all(m.data.isascii() for m in upstream.received)
    assert upstream.connections == 1


async def test_relay_with_8bitmime_gets_the_bytes_as_they_are(
    tmp_path: Path, upstream_factory: StartUpstream, run_engine: RunEngine
) -> None:
    """A relay that offers 8BITMIME gets the 8-bit message unchanged, declared with
    BODY=8BITMIME even when the client did not say so."""
    upstream = await upstream_factory()
    running = await run_engine(settings_for(tmp_path, relay_for(upstream)))
    original = eight_bit_message()
    await running.spool.store(original)
    await upstream.wait_for(1)
    assert original.data in upstream.received[0].data
    assert "BODY=8BITMIME" in upstream.received[0].mail_options


async def test_bounce_setting_bounces_with_a_clear_reason(
    tmp_path: Path, upstream_factory: StartUpstream, run_engine: RunEngine
) -> None:
    """With EightBitDowngrade "Bounce", 8-bit mail for a relay without 8BITMIME bounces
    at once with status 5.6.3 saying why; the relay gets nothing of it."""
    upstream = await upstream_factory(UpstreamSpec(eight_bit_mime=False))
    settings = settings_for(tmp_path, relay_for(upstream)).model_copy(
        update={"delivery": DeliverySettings(eight_bit_downgrade="Bounce")}
    )
    running = await run_engine(settings)
    await running.spool.store(eight_bit_message(sender="alice@jdx.test"))
    await running.engine.wait_idle()
    assert upstream.received == []
    assert spool_stats(running.spool.spool_dir).failed == 1
    (dsn_file,) = mailbox_dir_for(tmp_path / "mailbox", "alice@jdx.test").iterdir()
    dsn = dsn_file.read_text()
    assert "Status: 5.6.3" in dsn
    assert "8-bit content and no relay offers 8BITMIME" in dsn


def test_seven_bit_copy_keeps_addresses_and_ascii_messages() -> None:
    """Address headers keep their addresses (only names are encoded); a 7-bit message
    is returned as it is."""
    raw = "From: Jörg <j@x.test>\r\nTo: a@x.test, Zoë <z@y.test>\r\n\r\nHallo Jörg\r\n"
    copy = to_7bit(raw.encode())
    assert copy.isascii()
    parsed = parse(copy)
    assert [a.addr_spec for a in parsed["To"].addresses] == ["a@x.test", "z@y.test"]
    assert parsed["From"].addresses[0].display_name == "Jörg"
    assert parsed.get_content().replace("\r\n", "\n") == "Hallo Jörg\n"
    plain = b"Subject: x\r\n\r\nascii\r\n"
    assert to_7bit(plain) is plain
