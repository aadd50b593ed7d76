"""Backup and restore through the API against a real serve: the file exported with its secrets masked,
a restore validated before it replaces anything, the old file kept, the new applied."""

from __future__ import annotations

from tests.web.config_helpers import (
    CONFIG_WITH_SECRETS,
    GUIDE_HASH,
    RELAY_SECRET,
    api,
    assert_no_secret,
    can_login,
)
from tests.web.conftest import MakeConsole


async def test_backup_is_the_file_with_its_secrets_masked(make_console: MakeConsole) -> None:
    """The download is the config file with its comments, and holds no hash or password."""
    console = await make_console(CONFIG_WITH_SECRETS)
    async with api(console.url) as http:
        redacted = await http.get("/api/v1/config/backup")
        listed = await http.get("/api/v1/config/backups")
    assert redacted.status_code == 200
    assert redacted.headers["content-disposition"].startswith('attachment; filename="appsettings-')
    assert redacted.headers["cache-control"] == "no-store"
    assert "// console test config: keep this comment" in redacted.text
    assert GUIDE_HASH in console.config_path.read_text()
    assert_no_secret(redacted, GUIDE_HASH, RELAY_SECRET)
    assert listed.json()["backups"] == []


async def test_restore_validates_first_keeps_the_old_file_and_applies(
    make_console: MakeConsole,
) -> None:
    """A bad file replaces nothing; a good one is written, the old kept, its users work at once."""
    console = await make_console()
    before = console.config_path.read_text()
    async with api(console.url) as http:
        bad = await http.post(
            "/api/v1/config/restore",
            content=CONFIG_WITH_SECRETS.replace('"Port": 2525', '"Port": "x"'),
        )
        assert bad.status_code == 422
        assert bad.json()["findings"][0]["key"] == "SmtpServer.Port"
        assert console.config_path.read_text() == before
        assert list(console.tmp.glob("*.bak-*")) == []
        good = await http.post("/api/v1/config/restore", json={"text": CONFIG_WITH_SECRETS})
        assert good.status_code == 200, good.text
        body = good.json()
    assert console.config_path.read_text() == CONFIG_WITH_SECRETS
    backup = console.tmp / body["backup"]
    assert backup.name.startswith("appsettings.json.bak-")
    assert backup.read_text() == before
    assert body["applied"] is True
    assert "RelayServers" in body["restart"]
    assert [b["name"] for b in body["backups"]] == [backup.name]
    assert_no_secret(good, GUIDE_HASH, RELAY_SECRET)
    assert await can_login(console.smtp_port, "test@example.com", "password")


async def test_a_redacted_backup_restores_with_the_stored_secrets(
    make_console: MakeConsole,
) -> None:
    """Restoring the download without secrets keeps the hashes and passwords stored here."""
    console = await make_console(CONFIG_WITH_SECRETS)
    async with api(console.url) as http:
        redacted = (await http.get("/api/v1/config/backup")).text
        answer = await http.post("/api/v1/config/restore", content=redacted)
    assert answer.status_code == 200, answer.text
    assert console.config_path.read_text() == CONFIG_WITH_SECRETS
