"""The delivery engine against real aiosmtpd upstreams: a message goes out byte for byte, over
the relay's TLS and AUTH, with the sender rewritten when configured."""

from __future__ import annotations

import errno
import logging
import secrets
from pathlib import Path

import pytest
import trustme
from tests.queue.conftest import (
    BOTH_WAYS,
    RELAY_PASSWORD,
    RELAY_USER,
    RunEngine,
    StartUpstream,
    UpstreamSpec,
    ca_file,
    message,
    parse,
    relay_for,
    settings_for,
    state_of,
)

from jdxmail.queue.spool import spool_stats
from jdxmail.queue.worker import DeliveryOptions
from jdxmail.settings.model import DeliverySettings


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
