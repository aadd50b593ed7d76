"""Bounces and failed/: permanent refusals, partial refusals, expiry, what no relay can carry."""

from __future__ import annotations

import json
from pathlib import Path

from tests.queue.conftest import (
    BOTH_WAYS,
    RunEngine,
    StartUpstream,
    UpstreamSpec,
    message,
    parse,
    relay_for,
    settings_for,
)

from jdxmail.queue.admin import list_queue, retry_message
from jdxmail.queue.spool import read_queued_message, spool_stats


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
