"""A full disk and other I/O errors, on a small file system the test mounts itself:
the client gets 452 4.3.1 (full) or 451 4.3.0 (other errors), never a 250; nothing
half-written is left for delivery; the server keeps serving, logs why and recovers
by itself; a folder deleted under it is made again; delivery loses nothing."""

from __future__ import annotations

import io
import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest

from jdxmail.diagnostics.doctor import run_doctor
from jdxmail.logs import configure_logging
from jdxmail.queue.admin import list_queue
from jdxmail.queue.spool import Spool, spool_stats
from jdxmail.queue.worker import DeliveryOptions
from jdxmail.settings.model import Settings
from tests.faults.conftest import SmallFs
from tests.queue.conftest import (
    RunEngine,
    StartUpstream,
    UpstreamSpec,
    message,
    relay_for,
    settings_for,
)
from tests.server.conftest import StartServer, make_settings, port_of

BODY = b"Subject: disk test\r\n\r\n" + (b"0123456789abcdef" * 4 + b"\r\n") * 1000


async def send(port: int, recipient: str, body: bytes = BODY) -> tuple[int, str]:
    """Send *body* to *recipient* through the server on *port*; the final reply."""
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
    await client.connect()
    try:
        await client.ehlo()
        await client.mail("alice@example.com")
        await client.rcpt(recipient)
        reply = await client.data(body)
    except aiosmtplib.SMTPResponseException as exc:
        return exc.code, exc.message
    finally:
        client.close()
    return reply.code, reply.message


def files_under(folder: Path) -> list[Path]:
    """Every non-empty file below *folder* that could hold mail.

    Files made ahead are empty; the server's figures (spool/stats/) are no mail.
    """
    return [
        p
        for p in folder.rglob("*")
        if p.is_file() and p.stat().st_size and p.parent.name != "stats"
    ]


def paths_on(fs: SmallFs, **smtp: Any) -> Settings:
    """Server settings with spool, mailbox and logs on the small file system."""
    return make_settings(fs.path, **smtp)


async def test_dev_inbox_full_disk_is_452_then_recovers(
    small_fs: SmallFs, start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A full mailbox disk answers 452 4.3.1, leaves no file, keeps serving, and takes
    the same message (byte for byte) once space is freed."""
    app = await start_server(paths_on(small_fs))
    port = port_of(app)
    small_fs.fill()
    code, text = await send(port, "bob@mx.test")
    assert (code, text.split()[0]) == (452, "4.3.1")
    assert files_under(small_fs.path / "mailbox") == []
    assert "the disk is full" in caplog.text
    code, _ = await send(port, "bob@mx.test")  # still serving, still honest
    assert code == 452
    small_fs.free()
    code, _ = await send(port, "bob@mx.test")
    assert code == 250
    (stored,) = files_under(small_fs.path / "mailbox")
    assert stored.read_bytes().endswith(BODY)


async def test_relay_path_full_disk_is_452_and_nothing_is_queued(
    small_fs: SmallFs, start_server: StartServer, upstream_factory: StartUpstream
) -> None:
    """A full spool disk answers 452 4.3.1 with no queue file left for delivery; once
    space is freed the next message is queued and reaches the relay intact."""
    upstream = await upstream_factory()
    relay = {"Host": "127.0.0.1", "Port": upstream.port, "UseTls": False}
    app = await start_server(
        paths_on(small_fs, TrustedNetworks=["127.0.0.0/8"], RelayServers=[relay])
    )
    port = port_of(app)
    small_fs.fill()
    code, text = await send(port, "carol@example.net")
    assert (code, text.split()[0]) == (452, "4.3.1")
    spool = small_fs.path / "spool"
    assert files_under(spool / "queue") == []
    assert files_under(spool / "tmp") == []
    small_fs.free()
    code, _ = await send(port, "carol@example.net")
    assert code == 250
    await upstream.wait_for(1)
    assert upstream.received[0].data.endswith(BODY)
    assert len(upstream.received) == 1


async def test_other_io_error_is_451_then_recovers(
    small_fs: SmallFs, start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A write error that is not a full disk (a read-only file system here) answers
    451 4.3.0, logs why, and the server takes mail again once writes work."""
    app = await start_server(paths_on(small_fs))
    port = port_of(app)
    small_fs.read_only(True)
    try:
        code, text = await send(port, "bob@mx.test")
    finally:
        small_fs.read_only(False)
    assert (code, text.split()[0]) == (451, "4.3.0")
    assert "read-only" in caplog.text
    assert files_under(small_fs.path / "mailbox") == []
    code, _ = await send(port, "bob@mx.test")
    assert code == 250


async def test_folders_deleted_under_the_server_are_made_again(
    small_fs: SmallFs,
    start_server: StartServer,
    upstream_factory: StartUpstream,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Spool and mailbox folders someone deleted while serve runs are made again and the
    message is taken (250) and delivered, locally and to the relay."""
    upstream = await upstream_factory()
    relay = {"Host": "127.0.0.1", "Port": upstream.port, "UseTls": False}
    app = await start_server(
        paths_on(
            small_fs,
            TrustedNetworks=["127.0.0.0/8"],
            LocalDomains=["mx.test"],
            RelayServers=[relay],
        )
    )
    port = port_of(app)
    assert (await send(port, "bob@mx.test"))[0] == 250
    spool, mailbox = small_fs.path / "spool", small_fs.path / "mailbox"
    for folder in (spool / "tmp", spool / "queue", spool / "state", mailbox):
        shutil.rmtree(folder)
    assert (await send(port, "bob@mx.test"))[0] == 250
    assert (await send(port, "carol@example.net"))[0] == 250
    await upstream.wait_for(1)
    assert len(files_under(mailbox)) == 1
    assert "made again" in caplog.text
    for folder in (spool / "tmp", spool / "queue", spool / "state", mailbox / ".tmp"):
        assert folder.is_dir()


@pytest.mark.parametrize("where", ["state", "quota"])
async def test_full_disk_while_delivering_loses_nothing(
    small_fs: SmallFs,
    upstream_factory: StartUpstream,
    run_engine: RunEngine,
    caplog: pytest.LogCaptureFixture,
    where: str,
) -> None:
    """A full disk while the engine writes a delivery state (or the quota file) keeps
    the message queued, unharmed and not quarantined; freed, it is delivered."""
    upstream = await upstream_factory(UpstreamSpec(data_reply="451 4.3.0 not now"))
    quota: dict[str, Any] = {"daily_quota": 100} if where == "quota" else {}
    settings = settings_for(small_fs.path, relay_for(upstream, **quota))
    async with Spool(settings.paths.spool, settings.paths.mailbox) as spool:
        queue_id = await spool.store(message())
    small_fs.fill()
    running = await run_engine(settings, DeliveryOptions(retry_delay=3600))
    await running.engine.wait_idle()
    assert "could not write the delivery state (the disk is full" in caplog.text
    assert upstream.refused == (1 if where == "state" else 0)
    stats = spool_stats(settings.paths.spool)
    assert (stats.queued, stats.failed, stats.corrupt) == (1, 0, 0)
    assert list((settings.paths.spool / "state").glob(".*.tmp")) == []
    small_fs.free()
    upstream.spec.data_reply = None
    running.engine.flush()
    await upstream.wait_for(1)
    await running.engine.wait_idle()
    assert spool_stats(settings.paths.spool).queued == 0
    assert "m1@jdx.test" in upstream.received[0].data.decode()
    assert queue_id not in {e.queue_id for e in list_queue(settings.paths.spool)}


async def test_full_disk_while_storing_a_bounce_loses_nothing(
    small_fs: SmallFs,
    upstream_factory: StartUpstream,
    run_engine: RunEngine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A bounce that cannot be stored (disk full) keeps the message queued; once space
    is freed the bounce is stored, once, and the message kept in failed/."""
    upstream = await upstream_factory(
        UpstreamSpec(rcpt_replies={"bob@example.net": "550 5.1.1 no such user"})
    )
    settings = settings_for(small_fs.path, relay_for(upstream))
    async with Spool(settings.paths.spool, settings.paths.mailbox) as spool:
        await spool.store(message())
    small_fs.fill()
    running = await run_engine(settings, DeliveryOptions(retry_delay=3600))
    await running.engine.wait_idle()
    assert "could not store the bounce" in caplog.text
    assert spool_stats(settings.paths.spool).queued == 1
    small_fs.free()
    running.engine.flush()
    await running.engine.wait_idle()
    await upstream.wait_for(1)
    await running.engine.wait_idle()
    stats = spool_stats(settings.paths.spool)
    assert (stats.queued, stats.failed) == (0, 1)
    (bounce,) = upstream.received  # the one bounce, to the sender
    assert (bounce.mail_from, bounce.rcpt_tos) == ("<>", ["alice@example.com"])
    assert b"550 5.1.1 no such user" in bounce.data


@pytest.fixture
def console_logging(small_fs: SmallFs) -> Iterator[io.StringIO]:
    """jdxmail's logging into a folder on the small file system; restored afterwards."""
    root = logging.getLogger("jdxmail")
    level, propagate = root.level, root.propagate
    console = io.StringIO()
    configure_logging(small_fs.path / "logs", console=console)
    yield console
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)
    root.propagate = propagate


def test_log_file_on_a_full_disk(
    small_fs: SmallFs, console_logging: io.StringIO, capsys: pytest.CaptureFixture[str]
) -> None:
    """With the log disk full, lines still reach the console (once told why, no
    traceback); freed, the file says how many lines it missed and goes on."""
    log = logging.getLogger("jdxmail.smtp")
    log.info("before")
    small_fs.fill()
    for n in range(3):
        log.info("while full %d %s", n, "x" * 8192)
    console = console_logging.getvalue()
    assert console.count("cannot write the log file") == 1
    assert "the disk is full" in console
    assert all(f"while full {n}" in console for n in range(3))
    assert "Logging error" not in capsys.readouterr().err
    small_fs.free()
    log.info("after")
    text = (small_fs.path / "logs" / "jdxmail.log").read_text()
    assert "before" in text
    assert "after" in text
    assert "the log file works again; 3 line(s)" in text


def test_log_folder_deleted_is_made_again(small_fs: SmallFs, console_logging: io.StringIO) -> None:
    """A log folder deleted while serving is made again (looked at once a second)."""
    log = logging.getLogger("jdxmail.smtp")
    log.info("before")
    shutil.rmtree(small_fs.path / "logs")
    later = log.makeRecord(log.name, logging.INFO, "", 0, "a second later", (), None)
    later.created += 1.0  # (the check runs once per second of the records' time)
    log.handle(later)
    log.info("after")
    text = (small_fs.path / "logs" / "jdxmail.log").read_text()
    assert "a second later" in text
    assert "after" in text


async def test_doctor_says_the_disk_is_full(small_fs: SmallFs, tmp_path: Path) -> None:
    """doctor fails a disk row naming the full file system and the 452 it causes, and
    passes it again once space is freed."""
    config = tmp_path / "appsettings.json"
    config.write_text(
        json.dumps(
            {
                "Paths": {
                    "Spool": str(small_fs.path / "spool"),
                    "Mailbox": str(small_fs.path / "mailbox"),
                    "Logs": str(small_fs.path / "logs"),
                }
            }
        ),
        encoding="utf-8",
    )
    small_fs.fill()
    report = await run_doctor(config)
    (row,) = [r for r in report.rows if r.label == "disk" and "spool" in r.summary]
    assert row.ok is False
    assert "is full" in row.summary
    assert "452 4.3.1" in row.summary
    small_fs.free()
    report = await run_doctor(config)
    (row,) = [r for r in report.rows if r.label == "disk" and "spool" in r.summary]
    assert row.ok is True
