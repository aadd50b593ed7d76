"""When log lines reach the file and the console: in order, whole, the same text."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import smtplib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jdxmail.logs import SessionLog, configure_logging, register_secret
from tests.server.conftest import StartServer, port_of
from tests.server.test_lifecycle import ServeProcess, serve

__all__ = ["serve"]  # the fixture


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """jdxmail's logger as it was, after a test configured it."""
    root = logging.getLogger("jdxmail")
    level, propagate = root.level, root.propagate
    yield
    configure_logging(None, console=None)
    root.setLevel(level)
    root.propagate = propagate


class _PassAll(logging.Filter):
    """A filter that lets every record through (it makes the logging module do the work)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return True


def _calls(log: SessionLog) -> None:
    """Lines of every shape the server and the delivery process write."""
    smtp, relay = logging.getLogger("jdxmail.smtp"), logging.getLogger("jdxmail.relay")
    log.info(
        "accepted %s from <%s> size=%d local=%s relay=%s queue id %s",
        "<a.b@example.com>",
        "app@example.com",
        1024,
        "-",
        "far@example.org",
        "0123456789AB",
    )
    log.warning("refused <%s>: %s", 'odd "quoted" \\ name\u00e9\u4e2d', "550 5.7.1 no")
    log.debug("client said AUTH PLAIN AHRlc3QAcGFzc3dvcmQ=")
    relay.info(
        "%s: delivered to %s via %s: %s",
        "0123456789AB",
        "<far@example.org>",
        "relay1",
        "250 2.0.0 Ok",
        extra={"session": "3f9a1c2e"},
    )
    relay.info("using s3cret-direct-path, 100%% sure", extra={"session": ""})
    smtp.info("listening on %s", "127.0.0.1:2525")
    smtp.error("no session, tab\there, ctrl \x01")
    logging.getLogger("jdxmail.queue").info("%(n)d queued", {"n": 3})
    logging.getLogger("jdxmail.auth").info("no arguments %s")


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_lines_are_the_same_through_either_path(
    tmp_path: Path, log_format: str, monkeypatch: pytest.MonkeyPatch, restore_logging: None
) -> None:
    """Every kind of line is written byte for byte as the logging module formats it
    (time, level, category, session, masking, JSON escapes)."""
    register_secret("s3cret-direct-path")
    monkeypatch.setattr(time, "time", lambda: 1764912345.678)
    configure_logging(tmp_path, level=logging.DEBUG, console=None, log_format=log_format)
    log = SessionLog(logging.getLogger("jdxmail.smtp"), "00c0ffee")
    _calls(log)  # the direct path
    root = logging.getLogger("jdxmail")
    passing = _PassAll()
    root.addFilter(passing)  # a filter attached: every line through LogRecords
    try:
        _calls(log)
    finally:
        root.removeFilter(passing)
    lines = (tmp_path / "jdxmail.log").read_bytes().splitlines(keepends=True)
    half = len(lines) // 2
    assert half == 9
    assert lines[:half] == lines[half:]
    text = b"".join(lines).decode()
    assert "AHRlc3QAcGFzc3dvcmQ=" not in text
    assert "s3cret-direct-path" not in text
    if log_format == "json":
        records = [json.loads(line) for line in lines]
        assert records[0]["session"] == "00c0ffee"
        assert records[1]["message"].startswith('refused <odd "quoted" \\ name\u00e9\u4e2d>')
        assert records[4]["session"] is None


async def test_lines_of_a_turn_are_in_the_file_by_the_next_turn(
    tmp_path: Path, restore_logging: None
) -> None:
    """Sessions' lines logged on the loop are in the file and on the console, in order,
    once the loop has turned; a line of no session or an ERROR line is there at once."""
    console = io.StringIO()
    configure_logging(tmp_path, console=console)
    log = logging.getLogger("jdxmail.smtp")
    path = tmp_path / "jdxmail.log"

    async def session(number: int) -> None:
        for line in range(50):
            log.info("session %d line %d", number, line, extra={"session": f"s{number}"})
            await asyncio.sleep(0)

    await asyncio.gather(*(session(n) for n in range(20)))
    log.info("last of the turn", extra={"session": "s0"})
    await asyncio.sleep(0)
    lines = path.read_text().splitlines()
    assert len(lines) == 20 * 50 + 1
    assert lines[-1].endswith("last of the turn")
    for number in range(20):
        mine = [line for line in lines if f" session {number} " in line]
        assert [line.rsplit(" ", 1)[1] for line in mine] == [str(n) for n in range(50)]
    assert console.getvalue().splitlines() == lines
    log.info("waits", extra={"session": "s1"})
    log.error("at once", extra={"session": "s1"})
    assert [line[24:] for line in path.read_text().splitlines()[-2:]] == [
        "INFO  SMTP  [s1] waits",
        "ERROR SMTP  [s1] at once",
    ]
    log.info("stopped")
    assert path.read_text().endswith("] stopped\n")


def test_lines_without_a_loop_are_written_at_once(tmp_path: Path, restore_logging: None) -> None:
    """A command with no event loop running (the CLI, a worker thread) writes each line
    before the call returns."""
    configure_logging(tmp_path, console=None)
    logging.getLogger("jdxmail.queue").info("one")
    assert (tmp_path / "jdxmail.log").read_text().endswith("one\n")


async def test_accepted_lines_are_all_there_after_a_stop_under_load(
    tmp_path: Path, start_server: StartServer, restore_logging: None
) -> None:
    """After 20 clients' messages and a clean stop the file and the console hold one
    'accepted' line per message, each before its session's next line."""
    console = io.StringIO()
    configure_logging(tmp_path / "logs", console=console)
    app = await start_server(TrustedNetworks=["127.0.0.1/32"])
    port = port_of(app)

    def client(number: int) -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
            for message in range(10):
                smtp.sendmail(
                    f"s{number}m{message}@example.com",
                    ["bob@localhost"],
                    b"Subject: load\r\n\r\nhi\r\n",
                )

    await asyncio.gather(*(asyncio.to_thread(client, n) for n in range(20)))
    await app.stop(1.0)
    lines = (tmp_path / "logs" / "jdxmail.log").read_text().splitlines()
    assert console.getvalue().splitlines() == lines
    accepted = [line for line in lines if " accepted <" in line]
    assert len(accepted) == 200
    for number in range(20):
        mine = [line for line in accepted if f"<s{number}m" in line]
        assert [line.split("<s", 1)[1].split("@")[0] for line in mine] == [
            f"{number}m{m}" for m in range(10)
        ]
    assert lines[-1].endswith("stopped")


def test_serve_stopped_under_load_keeps_every_line(
    tmp_path: Path, serve: list[ServeProcess]
) -> None:
    """SIGTERM right after the last reply: the log file has every accepted message's
    line and ends with 'stopped'."""
    server = ServeProcess(tmp_path)  # the dev inbox
    serve.append(server)
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as smtp:
        for message in range(100):
            smtp.sendmail(f"m{message}@localhost", ["bob@localhost"], b"Subject: x\r\n\r\nhi\r\n")
    code, _ = server.stop()
    assert code == 0
    lines = (tmp_path / "logs" / "jdxmail.log").read_text().splitlines()
    assert sum(" accepted <" in line for line in lines) == 100
    assert lines[-1].endswith("stopped")


async def test_a_line_the_file_cannot_take_loses_only_itself(
    tmp_path: Path, restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """A line UTF-8 cannot encode (a lone surrogate) is reported as logging reports it;
    the other lines of its turn still reach the file."""
    configure_logging(tmp_path, console=None)
    log = logging.getLogger("jdxmail.smtp")
    log.info("before", extra={"session": "s1"})
    log.info("bad \udcff byte", extra={"session": "s1"})
    log.info("after", extra={"session": "s1"})
    await asyncio.sleep(0)
    lines = (tmp_path / "jdxmail.log").read_text().splitlines()
    assert [line.rsplit("] ", 1)[1] for line in lines] == ["before", "after"]
    assert "Logging error" in capsys.readouterr().err
