"""``Logging.Format: "json"``: one JSON object per log line, secrets masked."""

from __future__ import annotations

import base64
import io
import json
import logging
from datetime import date
from pathlib import Path

from jdxmail.diagnostics.doctor import _error_lines
from jdxmail.logs import JsonFormatter, MaskingFilter, configure_logging, register_secret
from jdxmail.logview import LogQuery, read_log
from jdxmail.passwords import hash_password
from jdxmail.settings.files import load_settings
from tests.server.conftest import PASSWORD, USER, user_entry
from tests.server.test_lifecycle import ServeProcess, serve, smtp_client, write_json

__all__ = ["serve"]  # the fixture

KEYS = {"time", "level", "category", "session", "message", "fields"}


def test_serve_writes_json_lines_with_auth_masked(
    tmp_path: Path, serve: list[ServeProcess]
) -> None:
    """A real serve logs only JSON objects, SMTP lines carry the session, AUTH data never."""
    config = write_json(
        tmp_path / "appsettings.json",
        {"SmtpServer": {"Users": [user_entry()]}, "Logging": {"Format": "json"}},
    )
    server = ServeProcess(tmp_path, "--config", str(config), "--verbose")
    serve.append(server)
    good = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
    wrong = base64.b64encode(f"\0{USER}\0not-the-password".encode()).decode()
    with smtp_client(server.port) as client:
        client.ehlo()
        assert client.docmd("AUTH", f"PLAIN {wrong}")[0] == 535
        assert client.docmd("AUTH", f"PLAIN {good}")[0] == 235
        client.sendmail(USER, ["someone@example.org"], "Subject: json\r\n\r\nhi\r\n")
    code, err = server.stop()
    assert code == 0
    text = (tmp_path / "logs" / "jdxmail.log").read_text()
    records = [json.loads(line) for line in text.splitlines()]
    console = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert records
    assert all(set(r) == KEYS for r in records + console)
    smtp = [r for r in records if r["category"] == "SMTP"]
    assert any("accepted" in r["message"] and r["session"] for r in smtp)
    assert any(r["category"] == "Auth" and r["level"] == "WARNING" for r in records)
    for secret in (good, wrong, hash_password(PASSWORD).split("$")[-1], "not-the-password"):
        assert secret not in text
        assert secret not in err
    assert any(r["message"] == ">> AUTH" and r["level"] == "DEBUG" for r in records)


def test_fields_and_errors_are_json_and_masked() -> None:
    """extra= values become fields (secrets masked); an exception is one error text."""
    register_secret("hunter2-relay-secret")
    record = logging.LogRecord(
        "jdxmail.relay", logging.ERROR, "", 0, "login to %s failed", ("relay1",), None
    )
    record.session = "3f9a1c2e"
    record.attempt = 3
    record.reply = "535 bad password hunter2-relay-secret"
    try:
        raise ConnectionError("refused hunter2-relay-secret")
    except ConnectionError as exc:
        record.exc_info = (type(exc), exc, exc.__traceback__)
    MaskingFilter().filter(record)
    data = json.loads(JsonFormatter().format(record))
    assert data["category"] == "Relay"
    assert data["session"] == "3f9a1c2e"
    assert data["message"] == "login to relay1 failed"
    assert data["fields"] == {"attempt": 3, "reply": "535 bad password ********"}
    assert data["error"] == "ConnectionError: refused ********"


def test_a_dotnet_logging_section_still_validates(tmp_path: Path) -> None:
    """A JumboDogX file's .NET "Logging": {"LogLevel": ...} is accepted beside Format."""
    config = write_json(
        tmp_path / "appsettings.json",
        {"Logging": {"LogLevel": {"Default": "Information"}}, "SmtpServer": {"Port": 2525}},
    )
    assert load_settings(config).settings.logging.format == "text"


def test_json_lines_read_back_like_text_lines(tmp_path: Path) -> None:
    """The console's log reader filters JSON lines by level, category and session too."""
    root = logging.getLogger("jdxmail")
    level, propagate = root.level, root.propagate
    folder = tmp_path / "logs"
    configure_logging(folder, console=io.StringIO(), log_format="json")
    try:
        logging.getLogger("jdxmail.smtp").info("127.0.0.1 connected", extra={"session": "s1"})
        logging.getLogger("jdxmail.relay").error("relay gmail failed: 535 bad credentials")
    finally:
        configure_logging(None, console=None)
        root.setLevel(level)
        root.propagate = propagate
    page = read_log(folder, query=LogQuery(level="error"))
    assert [(line.level, line.category, line.message) for line in page.lines] == [
        ("ERROR", "Relay", "relay gmail failed: 535 bad credentials")
    ]
    (connected,) = read_log(folder, query=LogQuery(text="connected")).lines
    assert connected.session == "s1"
    assert connected.time.startswith(date.today().isoformat() + " ")
    assert _error_lines(folder / "jdxmail.log", date.today()) == [
        (folder / "jdxmail.log").read_text().splitlines()[1]
    ]  # doctor's G1 row finds JSON ERROR lines too
