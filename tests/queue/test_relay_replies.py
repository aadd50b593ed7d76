"""The relay's replies read as aiosmtplib reads them: multi-line replies, replies split
across reads, malformed and over-long lines, on the pipelined path."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiosmtplib
import hypothesis
import hypothesis.strategies as st
import pytest
from aiosmtplib.protocol import MAX_LINE_LENGTH, SMTPProtocol
from tests.queue.conftest import RunEngine, message, raw_upstream, settings_for, state_of

from jdxmail.queue._aiosmtplib_compat import take_replies
from jdxmail.queue.spool import spool_stats

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def _relay(replies: dict[bytes, bytes], *, chunk: int) -> Handler:
    """A pipelining relay answering each command with its reply in *replies* (by
    verb; the data's reply under b"."), written *chunk* bytes at a time with a
    drain between pieces, so the replies reach the client split across reads."""

    async def write(writer: asyncio.StreamWriter, reply: bytes) -> None:
        for start in range(0, len(reply), chunk):
            writer.write(reply[start : start + chunk])
            await writer.drain()
            await asyncio.sleep(0)  # (a separate segment for each piece)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await write(writer, b"220 odd.invalid ESMTP\r\n")
        while line := await reader.readline():
            verb = line[:4].upper()
            if verb == b"EHLO":
                await write(writer, b"250-odd.invalid\r\n250 PIPELINING\r\n")
            elif verb == b"DATA":
                await write(writer, replies.get(b"DATA", b"354 go ahead\r\n"))
                while await reader.readline() not in (b".\r\n", b""):
                    pass
                await write(writer, replies.get(b".", b"250 2.0.0 queued\r\n"))
            elif verb == b"QUIT":
                await write(writer, b"221 bye\r\n")
                break
            else:
                await write(writer, replies.get(verb, b"250 ok\r\n"))
        writer.close()

    return handler


@pytest.mark.parametrize("chunk", [1, 3, 7, 1000], ids=lambda n: f"{n}-byte pieces")
async def test_multi_line_replies_split_across_reads_are_read_whole(
    tmp_path: Path, run_engine: RunEngine, caplog: pytest.LogCaptureFixture, chunk: int
) -> None:
    """Multi-line replies to every command, arriving in pieces of any size, deliver the
    message and log the whole final reply, its lines joined."""
    caplog.set_level(logging.INFO)
    replies = {
        b"MAIL": b"250-2.1.0 sender\r\n250 2.1.0 ok\r\n",
        b"RCPT": b"250-2.1.5 recipient\r\n250-\r\n250 2.1.5 ok\r\n",
        b"DATA": b"354-start\r\n354 end with <CRLF>.<CRLF>\r\n",
        b".": b"250-2.0.0 queued\r\n250-as ABC123\r\n250 2.0.0 ok\r\n",
    }
    async with raw_upstream(_relay(replies, chunk=chunk), time_out=5) as relay:
        running = await run_engine(settings_for(tmp_path, relay))
        queue_id = await running.spool.store(message())
        await running.engine.wait_idle()
    assert not running.spool.queue_path(queue_id).exists()
    assert f"{queue_id}: delivered to <bob@example.net> via " in caplog.text
    assert ": 250 2.0.0 queued as ABC123 2.0.0 ok" in caplog.text


async def test_multi_line_refusal_of_a_recipient_is_reported_whole(
    tmp_path: Path, run_engine: RunEngine, caplog: pytest.LogCaptureFixture
) -> None:
    """A recipient refused with a multi-line 550 in one-byte pieces fails, the log
    giving the whole reply."""
    replies = {b"RCPT": b"550-5.1.1 no such user\r\n550 5.1.1 see the directory\r\n"}
    async with raw_upstream(_relay(replies, chunk=1), time_out=5) as relay:
        running = await run_engine(settings_for(tmp_path, relay))
        queue_id = await running.spool.store(message(sender=""))
        await running.engine.wait_idle()
    assert spool_stats(running.spool.spool_dir).failed == 1
    assert (
        f"{queue_id}: relay {relay.display_name} refused <bob@example.net>: "
        "550 5.1.1 no such user 5.1.1 see the directory"
    ) in caplog.text


@pytest.mark.parametrize(
    ("mail_reply", "reason"),
    [
        (b"2x0 ok\r\n", "Malformed SMTP response line: 2x0 ok"),
        (b"250-fine\r\nabc broken\r\n", "Malformed SMTP response line: abc broken"),
        (b"250 " + b"x" * MAX_LINE_LENGTH + b"\r\n", "Response too long"),
    ],
    ids=["bad code", "bad code on a continuation line", "line too long"],
)
async def test_malformed_reply_fails_the_attempt_with_aiosmtplibs_reason(
    tmp_path: Path, run_engine: RunEngine, mail_reply: bytes, reason: str
) -> None:
    """A reply aiosmtplib would refuse to parse fails the attempt with aiosmtplib's
    reason; the message stays queued for a retry."""
    async with raw_upstream(_relay({b"MAIL": mail_reply}, chunk=5), time_out=5) as relay:
        running = await run_engine(settings_for(tmp_path, relay))
        queue_id = await running.spool.store(message())
        await running.engine.wait_idle()
    assert running.spool.queue_path(queue_id).is_file()
    state = state_of(running.spool.spool_dir, queue_id)
    assert state.attempts == 1
    assert reason in state.last_reply
    assert state.recipients["bob@example.net"].status == "pending"


# -- the same replies as aiosmtplib's own parser -------------------------------------

_LINE = st.builds(
    lambda code, mark, text, ending: code + mark + text + ending,
    st.sampled_from([b"250", b"354", b"550", b"2x0", b"25", b"", b" 25", b"4_2", b"99"]),
    st.sampled_from([b" ", b"-", b"", b"\t"]),
    st.binary(max_size=12).map(lambda b: b.replace(b"\n", b""))
    | st.sampled_from([b" text \t", b"y" * MAX_LINE_LENGTH]),
    st.sampled_from([b"\r\n", b"\n", b" \r\n"]),
)


def _aiosmtplib_replies(
    data: bytes, count: int
) -> tuple[list[aiosmtplib.SMTPResponse], str | None, bytes]:
    """What aiosmtplib's parser reads from *data*, one reply at a time, up to *count*."""
    protocol = SMTPProtocol.__new__(SMTPProtocol)
    protocol._buffer = bytearray(data)
    replies: list[aiosmtplib.SMTPResponse] = []
    error = None
    try:
        while len(replies) < count:
            reply = protocol._read_response_from_buffer()
            if reply is None:
                break
            replies.append(reply)
    except aiosmtplib.SMTPResponseException as exc:
        error = f"{exc.code} {exc.message}"
    return replies, error, bytes(protocol._buffer)


@hypothesis.given(
    st.lists(_LINE, max_size=8).map(b"".join),
    st.binary(max_size=6),
    st.integers(min_value=1, max_value=6),
)
def test_take_replies_reads_what_aiosmtplib_reads(lines: bytes, tail: bytes, count: int) -> None:
    """Any run of reply lines (and a partial one after) gives the replies, the error
    and the bytes left over that aiosmtplib's own parser gives."""
    data = lines + tail.replace(b"\n", b"")
    expected = _aiosmtplib_replies(data, count)
    buffer = bytearray(data)
    replies: list[aiosmtplib.SMTPResponse] = []
    error = None
    try:
        take_replies(buffer, count, replies)
    except aiosmtplib.SMTPResponseException as exc:
        error = f"{exc.code} {exc.message}"
    assert (replies, error, bytes(buffer)) == expected
