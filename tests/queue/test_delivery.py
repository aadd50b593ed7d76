"""The delivery engine against real aiosmtpd upstreams: TLS, AUTH, retries, bounces."""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import errno
import fcntl
import json
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import trustme
from tests.queue.conftest import (
    RELAY_PASSWORD,
    RELAY_USER,
    RunEngine,
    StartUpstream,
    UpstreamSpec,
    UpstreamStub,
    message,
    relay_for,
    settings_for,
)

from jdxmail.queue.admin import list_queue, retry_message
from jdxmail.queue.spool import Spool, read_queued_message, spool_stats
from jdxmail.queue.state import DeliveryState
from jdxmail.queue.worker import DeliveryOptions
from jdxmail.settings.model import DeliverySettings, RelaySettings

#: run a test against an upstream without and with PIPELINING (two code paths)
BOTH_WAYS = pytest.mark.parametrize(
    "upstream_pipelining", [False, True], ids=["serial", "pipelined"]
)


def ca_file(tmp_path: Path, ca: trustme.CA) -> Path:
    """The test CA written to a PEM file, as a user's CaFile."""
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@contextlib.asynccontextmanager
async def raw_upstream(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    *,
    time_out: int,
) -> AsyncIterator[RelaySettings]:
    """A relay pointing at a bare asyncio server running *handler* (for relays that
    misbehave in ways aiosmtpd will not)."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield relay_for(UpstreamStub("127.0.0.1", port), time_out=time_out)
    finally:
        server.close()


@contextlib.asynccontextmanager
async def silent_upstream() -> AsyncIterator[tuple[RelaySettings, asyncio.Event]]:
    """A relay (TimeOut 30 s) that takes connections and never says a word; the event
    is set once one is made."""
    accepted = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set()
        await reader.read()
        writer.close()

    async with raw_upstream(silent, time_out=30) as relay:
        yield relay, accepted


def state_of(spool_dir: Path, queue_id: str) -> DeliveryState:
    """The delivery state on disk of *queue_id*."""
    data = json.loads((spool_dir / "state" / f"{queue_id}.json").read_text())
    return DeliveryState.from_json(data, ())


def parse(data: bytes) -> EmailMessage:
    """Parse a received message."""
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


@BOTH_WAYS
async def test_plain_relay_delivers_and_logs_upstream_reply(
    tmp_path: Path,
    upstream_factory: StartUpstream,
    run_engine: RunEngine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A queued message reaches the relay, leaves the queue, and the 250 reply is logged."""
    caplog.set_level(logging.INFO)
    upstream = await upstream_factory()
    running = await run_engine(settings_for(tmp_path, relay_for(upstream, name="dev")))
    queue_id = await running.spool.store(message())
    await upstream.wait_for(1)
    await running.engine.wait_idle()
    got = upstream.received[0]
    assert got.mail_from == "alice@example.com"
    assert got.rcpt_tos == ["bob@example.net"]
    assert b"Subject: test 1" in got.data
    assert spool_stats(running.spool.spool_dir).queued == 0
    line = next(r for r in caplog.records if r.name == "jdxmail.relay" and queue_id in r.message)
    assert "queued as UP0001" in line.getMessage()
    assert "via dev" in line.getMessage()


@BOTH_WAYS
async def test_message_arrives_byte_for_byte(
    tmp_path: Path, upstream_factory: StartUpstream, run_engine: RunEngine
) -> None:
    """Lines starting with dots and 8-bit text reach the relay exactly as accepted."""
    upstream = await upstream_factory()
    running = await run_engine(settings_for(tmp_path, relay_for(upstream)))
    body = ".hidden\r\n..two dots\r\n.\r\nnot the end\r\nüñí\r\n".encode()
    sent = message(body=body)
    await running.spool.store(sent)
    await upstream.wait_for(1)
    assert upstream.received[0].data == sent.data


@BOTH_WAYS
async def test_big_message_arrives_byte_for_byte(
    tmp_path: Path, upstream_factory: StartUpstream, run_engine: RunEngine
) -> None:
    """A 3 MB message, sent in pieces, arrives exactly, dot lines at the seams included."""
    upstream = await upstream_factory()
    running = await run_engine(settings_for(tmp_path, relay_for(upstream)))
    line = b"x" * 76 + b"\r\n"
    piece = line * (1024 * 1024 // len(line))
    body = b".first\r\n" + piece + b".seam\r\n" + piece + b"..two\r\n" + piece + b"end\r\n"
    sent = message(body=body)
    await running.spool.store(sent)
    await upstream.wait_for(1)
    assert upstream.received[0].data == sent.data


async def test_delivered_files_are_reused_for_new_messages(
    tmp_path: Path,
    upstream_factory: StartUpstream,
    run_engine: RunEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A delivered queue file goes to spare/, the next message is written over it, and
    that message arrives intact (not the old one)."""
    monkeypatch.setattr("jdxmail.queue.spool._SPARE_IDLE_LOOK", 0.0)
    upstream = await upstream_factory()
    running = await run_engine(settings_for(tmp_path, relay_for(upstream)))
    first = await running.spool.store(message(1, body=b"the first, longer message\r\n" * 40))
    await upstream.wait_for(1)
    await running.engine.wait_idle()
    spare_dir = running.spool.spare_dir
    (kept,) = os.listdir(spare_dir)
    assert kept == f"{first}.1"  # spare/ID.N: N blocks of 4 KiB
    inode = os.stat(spare_dir / kept).st_ino
    second = message(2, body=b"the second\r\n")
    second_id = await running.spool.store(second)
    assert os.listdir(spare_dir) == []
    assert os.stat(running.spool.queue_file(second_id)).st_ino == inode
    await upstream.wait_for(2)
    assert upstream.received[1].data == second.data
    await running.engine.wait_idle()
    assert os.listdir(spare_dir) == [f"{second_id}.1"]


async def test_spare_files_are_pruned_oldest_first_at_the_limit(
    tmp_path: Path,
    upstream_factory: StartUpstream,
    run_engine: RunEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While nobody takes spare files (a queue draining, or sizes no longer needed),
    spare/ stays at about SPARE_LIMIT: past it the older half is removed, so the files
    of recent messages stay; big messages' files are never kept."""
    monkeypatch.setattr("jdxmail.queue.message_delivery.SPARE_LIMIT", 6)
    monkeypatch.setattr("jdxmail.queue.message_delivery._SPARE_COUNT_EVERY", 1)
    upstream = await upstream_factory()
    running = await run_engine(settings_for(tmp_path, relay_for(upstream)))
    spare_dir = running.spool.spare_dir
    big = message(99, body=(b"x" * 76 + b"\r\n") * 4000)
    await running.spool.store(big)
    await upstream.wait_for(1)
    await running.engine.wait_idle()
    assert os.listdir(spare_dir) == []  # over 256 KiB: removed
    for n in range(5):  # left by a burst of 40 KB messages long ago
        (spare_dir / f"0000000000000000000000{n:02d}.10").write_bytes(b"x" * 40_000)
    running.spool._spares_seen_at = time.monotonic() + 3600  # the server takes none
    ids = []
    for n in range(6):
        ids.append(await running.spool.store(message(n)))
        await upstream.wait_for(n + 2)
        await running.engine.wait_idle()
    files = running.engine.delivery._files
    assert files is not None
    await files.submit(lambda: None)  # after the removals queued on the file thread
    kept = sorted(os.listdir(spare_dir))
    assert len(kept) <= 6
    assert not any(name.endswith(".10") for name in kept)
    assert f"{ids[-1]}.1" in kept
    assert spool_stats(running.spool.spool_dir).queued == 0


async def test_starttls_required_and_auth_plain(
    tmp_path: Path,
    upstream_factory: StartUpstream,
    run_engine: RunEngine,
    ca: trustme.CA,
) -> None:
    """UseTls on port 587 upgrades with STARTTLS, verifies the CA file, logs in with PLAIN."""
    upstream = await upstream_factory(
        UpstreamSpec(tls="starttls", users={RELAY_USER: RELAY_PASSWORD})
    )
    relay = relay_for(upstream, ca_file=ca_file(tmp_path, ca), login=True)
    running = await run_engine(settings_for(tmp_path, relay))
    await running.spool.store(message())
    await upstream.wait_for(1)
    assert upstream.received[0].tls
    assert upstream.mechanisms == ["PLAIN"]


async def test_auth_login_when_plain_not_offered(
    tmp_path: Path,
    upstream_factory: StartUpstream,
    run_engine: RunEngine,
    ca: trustme.CA,
) -> None:
    """A relay that offers only LOGIN (like Outlook) gets AUTH LOGIN, not PLAIN."""
    upstream = await upstream_factory(
        UpstreamSpec(tls="starttls", users={RELAY_USER: RELAY_PASSWORD}, exclude_auth=["PLAIN"])
    )
    relay = relay_for(upstream, ca_file=ca_file(tmp_path, ca), login=True)
    running = await run_engine(settings_for(tmp_path, relay))
    await running.spool.store(message())
    await upstream.wait_for(1)
    assert upstream.mechanisms == ["LOGIN"]


async def test_relay_without_auth_is_not_used(
    tmp_path: Path, upstream_factory: StartUpstream, run_engine: RunEngine
) -> None:
    """A relay that offers no AUTH (here: not before TLS) gets nothing; the mail waits."""
    upstream = await upstream_factory(UpstreamSpec(tls="none"))
    relay = relay_for(upstream, login=True)
    running = await run_engine(settings_for(tmp_path, relay))
    queue_id = await running.spool.store(message())
    await running.engine.wait_idle()
    assert upstream.received == []
    assert "does not offer AUTH" in state_of(running.spool.spool_dir, queue_id).last_reply


@pytest.mark.parametrize("size", [300, 2_000_000], ids=["small", "sent from its file"])
async def test_sender_and_from_rewritten_to_relay_account(
    tmp_path: Path,
    upstream_factory: StartUpstream,
    run_engine: RunEngine,
    ca: trustme.CA,
    size: int,
) -> None:
    """With rewriting on, the relay sees its own account as sender; Reply-To keeps Alice."""
    upstream = await upstream_factory(
        UpstreamSpec(tls="starttls", users={RELAY_USER: RELAY_PASSWORD})
    )
    relay = relay_for(upstream, ca_file=ca_file(tmp_path, ca), login=True)
    options = DeliveryOptions(rewrite_sender=True, rewrite_from=True)
    running = await run_engine(settings_for(tmp_path, relay), options)
    body = (b"z" * 98 + b"\r\n") * (size // 100)
    await running.spool.store(message(body=body))
    await upstream.wait_for(1)
    got = upstream.received[0]
    assert got.data.endswith(body)
    assert got.mail_from == RELAY_USER
    parsed = parse(got.data)
    assert parsed["From"] == RELAY_USER
    assert parsed["Reply-To"] == "alice@example.com"
    assert parsed["Subject"] == "test 1"


async def test_delivery_section_of_the_config_sets_the_engine(
    tmp_path: Path, upstream_factory: StartUpstream, run_engine: RunEngine, ca: trustme.CA
) -> None:
    """Delivery.RewriteSender and the retry keys of the config reach the running engine."""
    upstream = await upstream_factory(
        UpstreamSpec(tls="starttls", users={RELAY_USER: RELAY_PASSWORD})
    )
    relay = relay_for(upstream, ca_file=ca_file(tmp_path, ca), login=True)
    settings = settings_for(tmp_path, relay).model_copy(
        update={
            "delivery": DeliverySettings(
                rewrite_sender=True, message_lifetime=3600, retry_delay=5, retry_max_delay=50
            )
        }
    )
    running = await run_engine(settings)
    assert (running.engine.lifetime, running.engine.retry_delay) == (3600, 5)
    await running.spool.store(message())
    await upstream.wait_for(1)
    assert upstream.received[0].mail_from == RELAY_USER
    assert parse(upstream.received[0].data)["From"] == "alice@example.com"


async def test_wrong_relay_password_retries_never_bounces(
    tmp_path: Path,
    upstream_factory: StartUpstream,
    run_engine: RunEngine,
    ca: trustme.CA,
) -> None:
    """A 535 from the relay is our configuration's fault: the mail waits, no bounce."""
    upstream = await upstream_factory(UpstreamSpec(tls="starttls", users={RELAY_USER: "other"}))
    relay = relay_for(upstream, ca_file=ca_file(tmp_path, ca), login=True)
    running = await run_engine(settings_for(tmp_path, relay))
    queue_id = await running.spool.store(message())
    await running.engine.wait_idle()
    state = state_of(running.spool.spool_dir, queue_id)
    assert state.attempts == 1
    assert state.last_reply.startswith("535")
    assert upstream.received == []
    assert spool_stats(running.spool.spool_dir).failed == 0


async def test_relay_without_starttls_is_not_used_in_plaintext(
    tmp_path: Path, upstream_factory: StartUpstream, run_engine: RunEngine
) -> None:
    """UseTls with a relay that does not offer STARTTLS fails the attempt; nothing is sent."""
    upstream = await upstream_factory(UpstreamSpec(tls="none"))
    relay = relay_for(upstream, use_tls=True)
    running = await run_engine(settings_for(tmp_path, relay))
    queue_id = await running.spool.store(message())
    await running.engine.wait_idle()
    assert upstream.received == []
    state = state_of(running.spool.spool_dir, queue_id)
    assert "does not offer STARTTLS" in state.last_reply
    assert state.pending() == ["bob@example.net"]


async def test_untrusted_certificate_is_refused(
    tmp_path: Path, upstream_factory: StartUpstream, run_engine: RunEngine
) -> None:
    """A relay certificate from an unknown CA fails the attempt; the mail stays queued."""
    stranger = trustme.CA().issue_cert("127.0.0.1", "localhost")
    upstream = await upstream_factory(UpstreamSpec(tls="starttls", cert=stranger))
    running = await run_engine(settings_for(tmp_path, relay_for(upstream)))
    queue_id = await running.spool.store(message())
    await running.engine.wait_idle()
    assert upstream.received == []
    state = state_of(running.spool.spool_dir, queue_id)
    assert "certificate not trusted" in state.last_reply
    assert state.recipients["bob@example.net"].code == "4.7.5"


async def test_verify_certificate_false_is_warned_and_works(
    tmp_path: Path,
    upstream_factory: StartUpstream,
    run_engine: RunEngine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """VerifyCertificate false accepts any certificate and says so in the log."""
    stranger = trustme.CA().issue_cert("127.0.0.1")
    upstream = await upstream_factory(UpstreamSpec(tls="starttls", cert=stranger))
    relay = relay_for(upstream, name="lab", verify_certificate=False)
    running = await run_engine(settings_for(tmp_path, relay))
    await running.spool.store(message())
    await upstream.wait_for(1)
    assert upstream.received[0].tls
    assert "relay lab: VerifyCertificate is false" in caplog.text


async def test_implicit_tls_on_port_465(
    tmp_path: Path, upstream_factory: StartUpstream, run_engine: RunEngine, ca: trustme.CA
) -> None:
    """UseTls on port 465 speaks TLS from the first byte."""
    a, b, c = (1 + secrets.randbelow(250) for _ in range(3))
    host = f"127.{a}.{b}.{c + 1}"
    cert = ca.issue_cert(host)
    try:
        upstream = await upstream_factory(
            UpstreamSpec(tls="implicit", cert=cert, users={RELAY_USER: RELAY_PASSWORD}),
            port=465,
            host=host,
        )
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EADDRINUSE, errno.EADDRNOTAVAIL):
            pytest.skip(f"cannot listen on {host}:465 here ({exc.strerror})")
        raise
    relay = relay_for(upstream, ca_file=ca_file(tmp_path, ca), login=True)
    assert relay.implicit_tls
    running = await run_engine(settings_for(tmp_path, relay))
    await running.spool.store(message())
    await upstream.wait_for(1)
    assert upstream.received[0].tls
    assert upstream.mechanisms == ["PLAIN"]


@BOTH_WAYS
async def test_temporary_failure_then_success(
    tmp_path: Path, upstream_factory: StartUpstream, run_engine: RunEngine
) -> None:
    """A 451 schedules a retry with backoff; the retry delivers the message once."""
    upstream = await upstream_factory(
        UpstreamSpec(data_reply="451 4.3.0 Try again later", refusals=1)
    )
    running = await run_engine(settings_for(tmp_path, relay_for(upstream)))
    before = time.time()
    queue_id = await running.spool.store(message())
    await running.engine.wait_idle()
    state = state_of(running.spool.spool_dir, queue_id)
    assert state.attempts == 1
    assert state.last_reply == "451 4.3.0 Try again later"
    assert before + 40 < state.next_try < before + 80
    running.engine.flush()
    await upstream.wait_for(1)
    await running.engine.wait_idle()
    assert upstream.recipients() == ["bob@example.net"]
    assert spool_stats(running.spool.spool_dir).queued == 0


@BOTH_WAYS
async def test_permanent_failure_bounces_with_dsn(
    tmp_path: Path, upstream_factory: StartUpstream, run_engine: RunEngine
) -> None:
    """A 550 for the recipient sends an RFC 3464 DSN to the sender and keeps the mail."""
    upstream = await upstream_factory(
        UpstreamSpec(rcpt_replies={"bob@example.net": "550 5.1.1 <bob@example.net>: no such user"})
    )
    running = await run_engine(settings_for(tmp_path, relay_for(upstream, name="up")))
    queue_id = await running.spool.store(message())
    await upstream.wait_for(1)
    await running.engine.wait_idle()
    dsn = upstream.received[0]
    assert dsn.mail_from == "<>"  # MAIL FROM:<>, as aiosmtpd reports it
    assert dsn.rcpt_tos == ["alice@example.com"]
    report = parse(dsn.data)
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    parts = list(report.iter_parts())
    assert [p.get_content_type() for p in parts] == [
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]
    status = parts[1].as_string()
    assert "Final-Recipient: rfc822; bob@example.net" in status
    assert "Status: 5.1.1" in status
    assert "Diagnostic-Code: smtp; 550 5.1.1 <bob@example.net>: no such user" in status
    assert "Subject: test 1" in parts[2].as_string()
    failed = running.spool.spool_dir / "failed"
    record = json.loads((failed / f"{queue_id}.json").read_text())
    assert "no such user" in record["state"]["recipients"]["bob@example.net"]["reply"]
    assert read_queued_message(failed / f"{queue_id}.msg").recipients == ("bob@example.net",)
    assert spool_stats(running.spool.spool_dir).queued == 0


@BOTH_WAYS
async def test_null_sender_gets_no_bounce(
    tmp_path: Path, upstream_factory: StartUpstream, run_engine: RunEngine
) -> None:
    """A refused message from <> is kept in failed/ but no DSN is sent."""
    upstream = await upstream_factory(
        UpstreamSpec(rcpt_replies={"bob@example.net": "550 5.1.1 no such user"})
    )
    running = await run_engine(settings_for(tmp_path, relay_for(upstream)))
    await running.spool.store(message(sender=""))
    await running.engine.wait_idle()
    assert upstream.received == []
    assert spool_stats(running.spool.spool_dir).failed == 1
    assert spool_stats(running.spool.spool_dir).queued == 0


@BOTH_WAYS
async def test_partial_recipient_refusal(
    tmp_path: Path, upstream_factory: StartUpstream, run_engine: RunEngine
) -> None:
    """Accepted recipients are delivered; only the refused one is bounced."""
    upstream = await upstream_factory(
        UpstreamSpec(rcpt_replies={"carol@example.net": "550 5.1.1 unknown"})
    )
    running = await run_engine(settings_for(tmp_path, relay_for(upstream)))
    await running.spool.store(message(to=("bob@example.net", "carol@example.net")))
    await upstream.wait_for(2)
    await running.engine.wait_idle()
    first, dsn = upstream.received
    assert first.rcpt_tos == ["bob@example.net"]
    assert dsn.rcpt_tos == ["alice@example.com"]
    status = parse(dsn.data).as_string()
    assert "Final-Recipient: rfc822; carol@example.net" in status
    assert "bob@example.net\r\nAction" not in status
    assert "Final-Recipient: rfc822; bob@example.net" not in status


@BOTH_WAYS
async def test_recipient_deferred_is_retried_alone(
    tmp_path: Path, upstream_factory: StartUpstream, run_engine: RunEngine
) -> None:
    """A 450 for one recipient retries only that recipient; the other gets no duplicate."""
    spec = UpstreamSpec(rcpt_replies={"carol@example.net": "450 4.2.1 mailbox busy"})
    upstream = await upstream_factory(spec)
    running = await run_engine(settings_for(tmp_path, relay_for(upstream)))
    queue_id = await running.spool.store(message(to=("bob@example.net", "carol@example.net")))
    await upstream.wait_for(1)
    await running.engine.wait_idle()
    assert state_of(running.spool.spool_dir, queue_id).pending() == ["carol@example.net"]
    spec.rcpt_replies.clear()
    running.engine.flush()
    await upstream.wait_for(2)
    await running.engine.wait_idle()
    assert upstream.recipients() == ["bob@example.net", "carol@example.net"]
    assert spool_stats(running.spool.spool_dir).queued == 0


async def test_failover_to_second_relay(
    tmp_path: Path,
    upstream_factory: StartUpstream,
    run_engine: RunEngine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """When the first relay cannot be reached, the next relay in the list gets the mail."""
    down = await upstream_factory()
    await down.close()
    backup = await upstream_factory()
    settings = settings_for(
        tmp_path, relay_for(down, name="primary"), relay_for(backup, name="backup")
    )
    running = await run_engine(settings)
    await running.spool.store(message())
    await backup.wait_for(1)
    await running.engine.wait_idle()
    assert "relay primary failed" in caplog.text
    assert "trying the next relay" in caplog.text
    assert spool_stats(running.spool.spool_dir).queued == 0


async def test_failing_relay_is_skipped_by_circuit_breaker(
    tmp_path: Path, upstream_factory: StartUpstream, run_engine: RunEngine
) -> None:
    """After three failures in a row a relay is skipped for a while; the next one serves."""
    down = await upstream_factory()
    await down.close()
    backup = await upstream_factory()
    settings = settings_for(
        tmp_path, relay_for(down, name="primary"), relay_for(backup, name="backup")
    )
    running = await run_engine(settings, DeliveryOptions(connections_per_relay=1))
    for n in range(5):
        await running.spool.store(message(n))
        await backup.wait_for(n + 1)
        await running.engine.wait_idle()
    breaker = running.engine.breakers["primary"]
    assert breaker.failures == 3
    assert breaker.open_until > time.time()


async def test_message_locked_by_another_is_tried_again_soon(
    tmp_path: Path, upstream_factory: StartUpstream, run_engine: RunEngine
) -> None:
    """A queue file another process holds locked when the engine wants it is delivered
    soon after the lock goes, not at the next 30 s rescan."""
    upstream = await upstream_factory()
    writer = Spool(tmp_path / "spool", tmp_path / "mailbox")
    await writer.open()
    queue_id = await writer.store(message())
    await writer.close()
    fd = os.open(writer.queue_file(queue_id), os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as another delivery process claims it
    try:
        await run_engine(settings_for(tmp_path, relay_for(upstream)))
        await asyncio.sleep(0.3)
        assert upstream.received == []
    finally:
        os.close(fd)
    async with asyncio.timeout(5):
        await upstream.wait_for(1)


async def test_mail_waits_in_memory_while_every_relay_is_skipped(
    tmp_path: Path,
    upstream_factory: StartUpstream,
    run_engine: RunEngine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Once the only relay's breaker is open, the other queued messages are not opened,
    rescheduled and logged one by one: they wait, untouched, until it reopens."""
    caplog.set_level(logging.INFO)
    down = await upstream_factory()
    await down.close()
    running = await run_engine(
        settings_for(tmp_path, relay_for(down, name="primary")),
        DeliveryOptions(connections_per_relay=1),
    )
    ids = [await running.spool.store(message(n)) for n in range(12)]
    await running.engine.wait_idle()
    breaker = running.engine.breakers["primary"]
    assert breaker.failures == 3
    state_dir = running.spool.spool_dir / "state"
    assert len(os.listdir(state_dir)) == 3  # the three attempts, nothing for the rest
    assert "skipped after repeated failures" not in caplog.text
    assert spool_stats(running.spool.spool_dir).queued == 12
    waiting = [i for i in ids if running.engine.scheduler.due.get(i) == breaker.open_until]
    assert len(waiting) == 9


async def test_quota_spills_over_and_survives_restart(
    tmp_path: Path, upstream_factory: StartUpstream, run_engine: RunEngine
) -> None:
    """Past its DailyQuota a relay gets nothing more, even after a restart; the next does."""
    gmail = await upstream_factory()
    backup = await upstream_factory()
    settings = settings_for(
        tmp_path,
        relay_for(gmail, name="gmail", daily_quota=2),
        relay_for(backup, name="backup"),
    )
    running = await run_engine(settings, DeliveryOptions(connections_per_relay=1))
    for n in range(3):
        await running.spool.store(message(n))
        await running.engine.wait_idle()
    assert len(gmail.received) == 2
    assert len(backup.received) == 1
    await running.engine.stop(1.0)
    await running.spool.close()
    again = await run_engine(settings)
    await again.spool.store(message(9))
    await backup.wait_for(2)
    assert len(gmail.received) == 2
    quota = json.loads((again.spool.spool_dir / "quota.json").read_text())
    assert quota["sent"] == {"gmail": 2}


async def test_quota_spent_on_only_relay_waits(
    tmp_path: Path, upstream_factory: StartUpstream, run_engine: RunEngine
) -> None:
    """With the only relay's quota spent, mail waits in the queue and says why."""
    gmail = await upstream_factory()
    settings = settings_for(tmp_path, relay_for(gmail, name="gmail", daily_quota=1))
    running = await run_engine(settings)
    await running.spool.store(message(1))
    await gmail.wait_for(1)
    await running.engine.wait_idle()
    queue_id = await running.spool.store(message(2))
    await running.engine.wait_idle()
    state = state_of(running.spool.spool_dir, queue_id)
    assert state.attempts == 0
    assert "gmail daily quota of 1 spent" in state.waiting_for
    assert len(gmail.received) == 1


@BOTH_WAYS
async def test_expired_message_bounces(
    tmp_path: Path, upstream_factory: StartUpstream, run_engine: RunEngine
) -> None:
    """A message still undelivered after its lifetime bounces with status 4.4.7."""
    flaky = await upstream_factory(UpstreamSpec(data_reply="451 4.3.0 later"))
    running = await run_engine(settings_for(tmp_path, relay_for(flaky)))
    old = message()
    old = type(old)(**{**{f: getattr(old, f) for f in old.__slots__}, "received_at": 1.0})
    await running.spool.store(old)
    await running.engine.wait_idle()
    assert spool_stats(running.spool.spool_dir).failed == 1
    record = next((running.spool.spool_dir / "failed").glob("*.json"))
    bob = json.loads(record.read_text())["state"]["recipients"]["bob@example.net"]
    assert bob["code"] == "4.4.7"
    assert "expired after 5 days" in bob["reply"]
    assert "451 4.3.0 later" in bob["reply"]


async def test_retry_of_expired_message_does_not_bounce_twice(
    tmp_path: Path, upstream_factory: StartUpstream, run_engine: RunEngine
) -> None:
    """queue retry of an expired message that fails again sends the sender no second bounce."""
    flaky = await upstream_factory(UpstreamSpec(data_reply="451 4.3.0 later"))
    running = await run_engine(settings_for(tmp_path, relay_for(flaky)))
    old = message()
    old = type(old)(**{**{f: getattr(old, f) for f in old.__slots__}, "received_at": 1.0})
    queue_id = await running.spool.store(old)
    await running.engine.wait_idle()
    spool_dir = running.spool.spool_dir
    bounces = [e for e in list_queue(spool_dir) if e.mail_from == ""]
    assert len(bounces) == 1
    assert retry_message(spool_dir, queue_id) is True
    running.engine.enqueue(queue_id)
    await running.engine.wait_idle()
    assert flaky.refused >= 2  # it was tried again
    assert spool_stats(spool_dir).failed == 1
    bounces = [e for e in list_queue(spool_dir) if e.mail_from == ""]
    assert len(bounces) == 1


@BOTH_WAYS
async def test_sessions_are_reused(
    tmp_path: Path, upstream_factory: StartUpstream, run_engine: RunEngine
) -> None:
    """Consecutive messages share one upstream connection (RSET between them)."""
    upstream = await upstream_factory()
    running = await run_engine(
        settings_for(tmp_path, relay_for(upstream)), DeliveryOptions(connections_per_relay=1)
    )
    for n in range(4):
        await running.spool.store(message(n))
        await upstream.wait_for(n + 1)
        await running.engine.wait_idle()
    assert upstream.connections == 1


async def test_corrupt_spool_file_moved_aside(
    tmp_path: Path,
    upstream_factory: StartUpstream,
    run_engine: RunEngine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A corrupt queue file is moved to corrupt/ and reported; other mail still flows."""
    upstream = await upstream_factory()
    queue_dir = tmp_path / "spool" / "queue"
    queue_dir.mkdir(parents=True)
    (queue_dir / "00000000000000000000bad1.msg").write_bytes(b'JDXSPOOL 1\n{"broken\n')
    running = await run_engine(settings_for(tmp_path, relay_for(upstream)))
    await running.spool.store(message())
    await upstream.wait_for(1)
    await running.engine.wait_idle()
    assert (tmp_path / "spool" / "corrupt" / "00000000000000000000bad1.msg").is_file()
    assert spool_stats(tmp_path / "spool").queued == 0
    assert "spool file is corrupt" in caplog.text


async def test_recovery_at_start_is_logged_and_delivered(
    tmp_path: Path,
    upstream_factory: StartUpstream,
    run_engine: RunEngine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Messages left queued by a previous run are counted in the log and delivered."""
    caplog.set_level(logging.INFO)
    upstream = await upstream_factory()
    settings = settings_for(tmp_path, relay_for(upstream))
    from jdxmail.queue.spool import Spool

    async with Spool(settings.paths.spool, settings.paths.mailbox) as spool:
        for n in range(3):
            await spool.store(message(n))
    await run_engine(settings)
    await upstream.wait_for(3)
    assert "delivery engine: 3 queued (0 being retried, 3 due now)" in caplog.text


async def test_message_locked_by_another_process_is_left_alone(
    tmp_path: Path, upstream_factory: StartUpstream, run_engine: RunEngine
) -> None:
    """A queue file another process holds (flock) is not delivered twice."""
    upstream = await upstream_factory()
    settings = settings_for(tmp_path, relay_for(upstream))
    from jdxmail.queue.spool import Spool

    async with Spool(settings.paths.spool, settings.paths.mailbox) as spool:
        queue_id = await spool.store(message())
    fd = os.open(spool.queue_path(queue_id), os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        running = await run_engine(settings)
        await running.engine.wait_idle()
        assert upstream.received == []
    finally:
        os.close(fd)
    running.engine.flush()
    await upstream.wait_for(1)


async def test_upstream_down_then_back(
    tmp_path: Path, upstream_factory: StartUpstream, run_engine: RunEngine
) -> None:
    """Mail queued while the relay is down is delivered once it is back."""
    first = await upstream_factory()
    port = first.port
    await first.close()
    relay = relay_for(first)
    running = await run_engine(settings_for(tmp_path, relay))
    ids = [await running.spool.store(message(n)) for n in range(3)]
    await running.engine.wait_idle()
    assert all(state_of(running.spool.spool_dir, i).attempts >= 1 for i in ids)
    try:
        back = await upstream_factory(port=port)
    except OSError as exc:  # the port was taken meanwhile
        pytest.skip(str(exc))
    running.engine.flush()
    await back.wait_for(3)
    assert sorted(m.data.split(b"Subject: ")[1][:6] for m in back.received) == [
        b"test 0",
        b"test 1",
        b"test 2",
    ]


async def test_message_that_keeps_crashing_is_moved_aside(
    tmp_path: Path,
    upstream_factory: StartUpstream,
    run_engine: RunEngine,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A message that crashes the worker three times goes to corrupt/, the rest flows."""
    upstream = await upstream_factory()
    running = await run_engine(settings_for(tmp_path, relay_for(upstream)))
    engine = running.engine
    real = engine.delivery._attempt_message

    async def attempt(queued: Any, state: Any, loaded: Any) -> None:
        if queued.message_id == "m1@jdx.test":
            raise RuntimeError("a bug that only this message triggers")
        await real(queued, state, loaded)

    monkeypatch.setattr(engine.delivery, "_attempt_message", attempt)
    bad = await running.spool.store(message(1))
    await engine.wait_idle()
    for _ in range(2):
        engine.flush()
        await engine.wait_idle()
    assert (tmp_path / "spool" / "corrupt" / f"{bad}.msg").is_file()
    assert "failed unexpectedly 3 times" in caplog.text
    await running.spool.store(message(2))
    await upstream.wait_for(1)


async def test_relay_silent_after_pipelined_commands_is_a_timeout_and_a_retry(
    tmp_path: Path, run_engine: RunEngine, caplog: pytest.LogCaptureFixture
) -> None:
    """A relay that takes MAIL/RCPT/DATA in one go and then says nothing: after its
    TimeOut the attempt fails with a readable reason and the message waits for a retry."""

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 mute.invalid ESMTP\r\n")
        assert (await reader.readline()).startswith(b"EHLO")
        writer.write(b"250-mute.invalid\r\n250 PIPELINING\r\n")
        await reader.read()  # the pipelined group, then silence
        writer.close()

    async with raw_upstream(mute, time_out=1) as relay:
        running = await run_engine(settings_for(tmp_path, relay))
        started = time.monotonic()
        queue_id = await running.spool.store(message())
        await running.engine.wait_idle()
        assert time.monotonic() - started < 8  # the 1 s TimeOut, not the 10 s deadline
        state = state_of(running.spool.spool_dir, queue_id)
        assert state.attempts == 1
        assert "no reply within 1 s" in state.last_reply
        assert "no reply within 1 s" in caplog.text
        assert running.spool.queue_path(queue_id).is_file()


async def test_stop_does_not_wait_for_a_silent_relay(
    tmp_path: Path, run_engine: RunEngine, caplog: pytest.LogCaptureFixture
) -> None:
    """stop(grace) gives up on an attempt to a relay that never answers; mail stays queued."""
    async with silent_upstream() as (relay, accepted):
        running = await run_engine(settings_for(tmp_path, relay))
        queue_id = await running.spool.store(message())
        await accepted.wait()
        await running.engine.stop(0.2)
        assert "1 deliveries still running after 0 s" in caplog.text
        assert running.spool.queue_path(queue_id).is_file()


async def test_smtputf8_message_bounces_when_no_relay_offers_it(
    tmp_path: Path, upstream_factory: StartUpstream, run_engine: RunEngine
) -> None:
    """An SMTPUTF8 message no relay can carry bounces with 5.6.7 instead of waiting days."""
    upstream = await upstream_factory()
    running = await run_engine(settings_for(tmp_path, relay_for(upstream)))
    await running.spool.store(message(to=("bob@example.net",), options=("SMTPUTF8",)))
    await upstream.wait_for(1)
    await running.engine.wait_idle()
    dsn = upstream.received[0]
    assert dsn.rcpt_tos == ["alice@example.com"]
    assert "Status: 5.6.7" in parse(dsn.data).as_string()
    assert spool_stats(running.spool.spool_dir).failed == 1


async def test_startup_keeps_state_files_another_live_process_is_writing(
    tmp_path: Path, upstream_factory: StartUpstream, run_engine: RunEngine
) -> None:
    """At start, a state temp file of a dead writer is removed; a live writer's is kept."""
    upstream = await upstream_factory()
    state_dir = tmp_path / "spool" / "state"
    state_dir.mkdir(parents=True)
    finished = await asyncio.create_subprocess_exec("true")
    await finished.wait()  # reaped: its pid names no process now
    alive = await asyncio.create_subprocess_exec("sleep", "30")
    try:
        stale = state_dir / f".x.json.{finished.pid}.1.tmp"
        live = state_dir / f".y.json.{alive.pid}.1.tmp"
        stale.write_text("{}")
        live.write_text("{}")
        await run_engine(settings_for(tmp_path, relay_for(upstream)))
    finally:
        alive.kill()
        await alive.wait()
    assert not stale.exists()
    assert live.exists()


async def test_pipelined_transaction_is_sent_in_one_write(
    tmp_path: Path, upstream_factory: StartUpstream, run_engine: RunEngine
) -> None:
    """With PIPELINING, MAIL, every RCPT and DATA go out together; the data is exact."""
    upstream = await upstream_factory(UpstreamSpec(pipelining=True))
    running = await run_engine(settings_for(tmp_path, relay_for(upstream)))
    sent = message(to=("a@example.net", "b@example.net", "c@example.net"), body=b".dot\r\nx\r\n")
    await running.spool.store(sent)
    await upstream.wait_for(1)
    await running.engine.wait_idle()
    assert upstream.pipelined == 1
    assert upstream.received[0].rcpt_tos == ["a@example.net", "b@example.net", "c@example.net"]
    assert upstream.received[0].data == sent.data


@pytest.mark.parametrize(
    ("spec", "queued", "failed"),
    [
        (UpstreamSpec(pipelining=True, mail_reply="550 5.7.1 sender not allowed"), 0, 1),
        (UpstreamSpec(pipelining=True, mail_reply="451 4.7.1 greylisted"), 1, 0),
        (UpstreamSpec(pipelining=True, rcpt_replies={"bob@example.net": "550 5.1.1 no"}), 0, 1),
    ],
    ids=["MAIL 5xx bounces", "MAIL 4xx retries", "only recipient refused"],
)
async def test_pipelined_refusals_send_no_data(
    tmp_path: Path,
    upstream_factory: StartUpstream,
    run_engine: RunEngine,
    spec: UpstreamSpec,
    queued: int,
    failed: int,
) -> None:
    """A refused MAIL or every RCPT refused: the body is never sent, the verdict holds."""
    upstream = await upstream_factory(spec)
    running = await run_engine(settings_for(tmp_path, relay_for(upstream)))
    await running.spool.store(message(sender=""))
    await running.engine.wait_idle()
    assert upstream.pipelined == 1
    assert upstream.received == []
    stats = spool_stats(running.spool.spool_dir)
    assert (stats.queued, stats.failed) == (queued, failed)


@BOTH_WAYS
async def test_session_closed_by_the_relay_while_idle_is_replaced_quietly(
    tmp_path: Path, upstream_factory: StartUpstream, run_engine: RunEngine
) -> None:
    """A reused session the relay dropped meanwhile costs no attempt: the mail just goes."""
    upstream = await upstream_factory()
    running = await run_engine(
        settings_for(tmp_path, relay_for(upstream)), DeliveryOptions(connections_per_relay=1)
    )
    await running.spool.store(message(1))
    await upstream.wait_for(1)
    await running.engine.wait_idle()
    for session in upstream.sessions:
        if session.transport is not None:
            session.transport.close()
    queue_id = await running.spool.store(message(2))
    await upstream.wait_for(2)
    await running.engine.wait_idle()
    assert upstream.connections == 2
    assert not (running.spool.spool_dir / "state" / f"{queue_id}.json").exists()
    assert spool_stats(running.spool.spool_dir).queued == 0


async def _queued_before_start(tmp_path: Path, count: int) -> list[bytes]:
    """Store *count* messages while no engine runs (its start finds them all due)."""
    spool = Spool(tmp_path / "spool", tmp_path / "mailbox")
    await spool.open()
    try:
        sent = [message(n) for n in range(count)]
        for item in sent:
            await spool.store(item)
    finally:
        await spool.close()
    return [bytes(item.data) for item in sent]


async def test_next_message_goes_out_with_the_data_before_it(
    tmp_path: Path, upstream_factory: StartUpstream, run_engine: RunEngine
) -> None:
    """With PIPELINING and a busy session, a waiting message's MAIL, RCPT and DATA
    follow the previous message's data in the same write (RFC 2920 §3.1): one round
    trip per message. Every message arrives once, exact, over the one session."""
    sent = await _queued_before_start(tmp_path, 6)
    upstream = await upstream_factory(UpstreamSpec(pipelining=True))
    running = await run_engine(
        settings_for(tmp_path, relay_for(upstream)), DeliveryOptions(connections_per_relay=1)
    )
    await upstream.wait_for(6)
    await running.engine.wait_idle()
    assert sorted(m.data for m in upstream.received) == sorted(sent)
    assert upstream.connections == 1
    assert upstream.chained >= 1  # the second message waited while the first was sent
    assert spool_stats(running.spool.spool_dir).queued == 0


async def test_refused_data_leaves_the_message_sent_after_it_alone(
    tmp_path: Path, upstream_factory: StartUpstream, run_engine: RunEngine
) -> None:
    """A message whose data is refused while the next one's commands follow it: no RSET
    cuts into the next transaction; it is delivered, the refused one waits for a retry."""
    await _queued_before_start(tmp_path, 2)
    upstream = await upstream_factory(
        UpstreamSpec(pipelining=True, data_reply="451 4.3.0 try again later", refusals=1)
    )
    running = await run_engine(
        settings_for(tmp_path, relay_for(upstream)), DeliveryOptions(connections_per_relay=1)
    )
    await upstream.wait_for(1)
    await running.engine.wait_idle()
    assert upstream.chained == 1
    assert upstream.connections == 1
    assert len(upstream.received) == 1
    (waiting,) = running.spool.queued_ids()
    state = state_of(running.spool.spool_dir, waiting)
    assert state.attempts == 1
    assert "451" in state.last_reply


async def test_session_lost_after_data_sends_the_next_message_on_a_new_one(
    tmp_path: Path, run_engine: RunEngine
) -> None:
    """The relay drops the session after a message's data, with the next message's
    commands already sent: that one goes on a new session; the dropped one is retried."""
    sent = await _queued_before_start(tmp_path, 2)
    got: list[bytes] = []
    sessions = 0
    ahead = b""

    async def drops_first(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sessions, ahead
        sessions += 1
        first = sessions == 1
        writer.write(b"220 flaky.invalid ESMTP\r\n")
        await reader.readline()
        writer.write(b"250-flaky.invalid\r\n250 PIPELINING\r\n")
        while line := await reader.readline():
            verb = line[:4].upper()
            if verb == b"DATA":
                writer.write(b"354 go ahead\r\n")
                data = await reader.readuntil(b"\r\n.\r\n")
                if first:  # gone before the reply to the data
                    ahead = await asyncio.wait_for(reader.read(65536), 1)  # what came with it
                    break
                got.append(data)
                writer.write(b"250 2.0.0 queued\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                break
            else:
                writer.write(b"250 2.0.0 ok\r\n")
        writer.close()

    async with raw_upstream(drops_first, time_out=5) as relay:
        running = await run_engine(
            settings_for(tmp_path, relay), DeliveryOptions(connections_per_relay=1)
        )
        await running.engine.wait_idle()
    assert ahead.startswith(b"MAIL FROM:")
    assert ahead.endswith(b"DATA\r\n")
    assert sessions == 2
    (waiting,) = running.spool.queued_ids()
    retried = read_queued_message(running.spool.queue_path(waiting)).data
    assert got == [next(data for data in sent if data != retried) + b".\r\n"]
    assert state_of(running.spool.spool_dir, waiting).attempts == 1


async def test_stop_while_messages_wait_for_a_turn_keeps_them_all(
    tmp_path: Path, run_engine: RunEngine, caplog: pytest.LogCaptureFixture
) -> None:
    """stop() while one message is stuck at a silent relay and others wait for a turn
    there: every message stays queued, none is half-sent, nothing crashes."""
    await _queued_before_start(tmp_path, 4)
    async with silent_upstream() as (relay, accepted):
        running = await run_engine(
            settings_for(tmp_path, relay), DeliveryOptions(connections_per_relay=1)
        )
        await accepted.wait()
        await asyncio.sleep(0.1)  # the second worker is waiting for a turn by now
        await running.engine.stop(0.2)
    assert spool_stats(running.spool.spool_dir).queued == 4
    assert "unexpectedly" not in caplog.text
    assert "Traceback" not in caplog.text
    assert all(r.levelno < logging.ERROR for r in caplog.records)
