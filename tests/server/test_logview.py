"""Reading the log files back: days, filters by level, category and text, following."""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path

import pytest

from jdxmail.logs import configure_logging
from jdxmail.logview import LogFollower, LogQuery, UnknownLogDay, log_days, read_log


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


def _write_sample(logs_dir: Path) -> None:
    logging.getLogger("jdxmail.smtp").info("127.0.0.1 connected", extra={"session": "s1"})
    logging.getLogger("jdxmail.auth").warning("login failed for user bob")
    logging.getLogger("jdxmail.relay").error("relay gmail failed: 535 bad credentials")
    logging.getLogger("jdxmail.queue").info("queued 1 message")


def test_filters_by_level_category_and_text(logs_dir: Path) -> None:
    """A level keeps it and the levels above; category and text narrow further."""
    _write_sample(logs_dir)
    page = read_log(logs_dir, query=LogQuery(level="warning"))
    assert [line.category for line in page.lines] == ["Auth", "Relay"]
    page = read_log(logs_dir, query=LogQuery(category="relay"))
    assert [line.message for line in page.lines] == ["relay gmail failed: 535 bad credentials"]
    assert page.lines[0].level == "ERROR"
    page = read_log(logs_dir, query=LogQuery(text="CONNECTED"))
    assert [(line.session, line.category) for line in page.lines] == [("s1", "SMTP")]
    with pytest.raises(ValueError, match="unknown level"):
        LogQuery(level="loud")


def test_limit_keeps_the_newest_lines_in_order(logs_dir: Path) -> None:
    """With a limit the newest lines come back, oldest first, and more is set."""
    for n in range(3000):
        logging.getLogger("jdxmail.smtp").info("line %d", n)
    page = read_log(logs_dir, limit=2)
    assert [line.message for line in page.lines] == ["line 2998", "line 2999"]
    assert page.more
    assert not read_log(logs_dir, limit=5000).more


def test_earlier_days_are_listed_and_read(logs_dir: Path) -> None:
    """A renamed file of an earlier day is listed after today's and can be read."""
    _write_sample(logs_dir)
    old = logs_dir / "jdxmail-20261201.log"
    old.write_text("2026-12-01 10:00:00.000 INFO  SMTP  [-] an old line\n")
    days = log_days(logs_dir)
    assert [d.current for d in days] == [True, False]
    assert days[1].day == date(2026, 12, 1)
    page = read_log(logs_dir, "2026-12-01")
    assert [line.message for line in page.lines] == ["an old line"]
    assert page.lines[0].session == ""
    with pytest.raises(UnknownLogDay):
        read_log(logs_dir, "2026-11-01")
    with pytest.raises(UnknownLogDay):
        read_log(logs_dir, "../../etc/passwd")


def test_follower_sees_lines_of_other_writers_and_the_midnight_rename(logs_dir: Path) -> None:
    """New lines appended by any process show up; after the rename the new file is read."""
    _write_sample(logs_dir)
    follower = LogFollower(logs_dir)
    follower.start_at_end()
    assert follower.read_new() == []
    with open(logs_dir / "jdxmail.log", "a", encoding="utf-8") as other:  # another process
        stamp = datetime.now().strftime("%Y-%m-%d %H:%M:%S.000")
        other.write(f"{stamp} INFO  Relay [-] from the delivery process\n")
    page = read_log(logs_dir)
    (new,) = follower.read_new()
    assert new.message == "from the delivery process"
    # its offset points at the line, and lies before the end of a page read meanwhile,
    # which holds the line already (the page skips it in the event)
    assert (logs_dir / "jdxmail.log").read_bytes()[new.at :].startswith(stamp.encode())
    assert new.at < page.end
    assert page.lines[-1].message == "from the delivery process"
    os.rename(logs_dir / "jdxmail.log", logs_dir / "jdxmail-20261203.log")
    logging.getLogger("jdxmail").handlers[0].doRollover()  # type: ignore[attr-defined]
    logging.getLogger("jdxmail.smtp").info("after midnight")
    assert [line.message for line in follower.read_new()] == ["after midnight"]
