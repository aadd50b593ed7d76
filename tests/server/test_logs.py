"""Log lines: format, categories, daily files, and secrets that never appear."""

from __future__ import annotations

import base64
import io
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jdxmail.logs import DailyFileHandler, category_of, configure_logging, register_secret
from jdxmail.passwords import hash_password
from tests.server.conftest import USER, Client, StartServer, port_of, user_entry

LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} (INFO |WARNING|ERROR|DEBUG) (SMTP |Auth |Queue|Relay)"
    r" \[[0-9a-f-]+\] .+$"
)


@pytest.fixture
def logs_dir(tmp_path: Path) -> Iterator[Path]:
    """Logging configured into tmp_path/logs; jdxmail's logger restored afterwards."""
    root = logging.getLogger("jdxmail")
    level, propagate = root.level, root.propagate
    folder = tmp_path / "logs"
    configure_logging(folder, console=io.StringIO())
    yield folder
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)
    root.propagate = propagate


def test_categories_levels_and_sessions_are_greppable(logs_dir: Path) -> None:
    """Each line has time, level, category and session, so grep SMTP/ERROR/Relay work."""
    logging.getLogger("jdxmail.smtp").info("hello", extra={"session": "abcd1234"})
    logging.getLogger("jdxmail.auth").warning("login failed")
    logging.getLogger("jdxmail.queue").error("disk full")
    logging.getLogger("jdxmail.relay").info("delivered")
    lines = (logs_dir / "jdxmail.log").read_text().splitlines()
    assert len(lines) == 4
    assert all(LINE.match(line) for line in lines), lines
    assert "SMTP  [abcd1234] hello" in lines[0]
    assert [line for line in lines if " ERROR " in line] == [lines[2]]
    assert [line for line in lines if "Relay" in line] == [lines[3]]
    assert category_of("jdxmail.smtp") == "SMTP"


def test_console_and_file_get_the_same_lines(tmp_path: Path) -> None:
    """Every line reaches both the console and the file, masked and formatted alike."""
    root = logging.getLogger("jdxmail")
    level, propagate = root.level, root.propagate
    console = io.StringIO()
    configure_logging(tmp_path, console=console)
    try:
        logging.getLogger("jdxmail.smtp").info("first", extra={"session": "00c0ffee"})
        logging.getLogger("jdxmail.auth").warning("client said AUTH LOGIN dXNlcg==")
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
            handler.close()
        root.setLevel(level)
        root.propagate = propagate
    lines = (tmp_path / "jdxmail.log").read_text().splitlines()
    assert console.getvalue().splitlines() == lines
    assert len(lines) == 2
    assert "[00c0ffee] first" in lines[0]
    assert "dXNlcg==" not in lines[1]
    assert "AUTH LOGIN ********" in lines[1]


def test_daily_file_is_renamed_with_its_date(logs_dir: Path) -> None:
    """At rollover jdxmail.log becomes jdxmail-YYYYMMDD.log and a fresh file starts."""
    logger = logging.getLogger("jdxmail.smtp")
    logger.info("yesterday")
    handler = next(
        h for h in logging.getLogger("jdxmail").handlers if isinstance(h, DailyFileHandler)
    )
    handler.doRollover()
    logger.info("today")
    day = time.strftime("%Y%m%d", time.localtime(handler.rolloverAt - 2 * 86400))
    rotated = sorted(p.name for p in logs_dir.glob("jdxmail-*.log"))
    assert len(rotated) == 1
    assert re.fullmatch(r"jdxmail-\d{8}\.log", rotated[0])
    assert rotated[0] >= f"jdxmail-{day}.log"
    assert "yesterday" in (logs_dir / rotated[0]).read_text()
    assert "today" in (logs_dir / "jdxmail.log").read_text()
    assert "yesterday" not in (logs_dir / "jdxmail.log").read_text()


def test_auth_payloads_and_secrets_are_masked(logs_dir: Path) -> None:
    """An AUTH line or a registered secret that reaches a log call is written as ********."""
    register_secret("s3cret-relay-password")
    logger = logging.getLogger("jdxmail.relay")
    logger.info("client said AUTH PLAIN AHRlc3QAcGFzc3dvcmQ=")
    logger.info("using %s", "s3cret-relay-password")
    text = (logs_dir / "jdxmail.log").read_text()
    assert "AHRlc3QAcGFzc3dvcmQ=" not in text
    assert "s3cret-relay-password" not in text
    assert text.count("********") == 2


async def test_a_real_session_logs_no_password_hash_or_payload(
    logs_dir: Path, start_server: StartServer
) -> None:
    """After good and bad logins the log file has the user name but no secret at all."""
    password = "Tr0ub4dor&3-horse"
    app = await start_server(Users=[user_entry(password=password)])
    client = await Client.connect(port_of(app))
    await client.ehlo()
    stored = hash_password(password)
    bad = base64.b64encode(f"\0{USER}\0{stored}".encode()).decode()
    good = base64.b64encode(f"\0{USER}\0{password}".encode()).decode()
    assert (await client.cmd(f"AUTH PLAIN {bad}")).startswith("535")
    assert await client.cmd("AUTH LOGIN") == "334 VXNlcm5hbWU6"
    await client.cmd(base64.b64encode(USER.encode()).decode())
    assert (await client.cmd(base64.b64encode(password.encode()).decode())).startswith("235")
    await client.cmd("QUIT")
    await app.stop(1)
    text = (logs_dir / "jdxmail.log").read_text()
    assert f"logged in as {USER}" in text
    assert "JDX-D2" in text
    for secret in (password, stored, bad, good, base64.b64encode(password.encode()).decode()):
        assert secret not in text


def test_two_processes_rotate_the_shared_file_once(tmp_path: Path) -> None:
    """With two writers (serve --workers) midnight keeps yesterday's lines of both."""
    path = tmp_path / "jdxmail.log"
    first, second = DailyFileHandler(path), DailyFileHandler(path)
    try:
        for handler, text in ((first, "one yesterday"), (second, "two yesterday")):
            handler.emit(logging.makeLogRecord({"msg": text}))
        first.doRollover()
        first.emit(logging.makeLogRecord({"msg": "one today"}))
        second.doRollover()
        second.emit(logging.makeLogRecord({"msg": "two today"}))
    finally:
        first.close()
        second.close()
    rotated = list(tmp_path.glob("jdxmail-*.log"))
    assert len(rotated) == 1
    assert rotated[0].read_text().split() == ["one", "yesterday", "two", "yesterday"]
    assert path.read_text().split() == ["one", "today", "two", "today"]
