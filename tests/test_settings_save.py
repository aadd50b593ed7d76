"""Saving a whole config (the console's Settings page and restore): values set in place
with comments kept, validation before anything is written, write-only secrets, the
restart list, backups, and the F1 message for a file that cannot be written."""

from __future__ import annotations

import pytest

from jdxmail.settings import secrets
from jdxmail.settings.backup import restore_config
from jdxmail.settings.edit import ConfigWriteError
from jdxmail.settings.files import load_settings, read_source
from jdxmail.settings.save import (
    ConfigChangedError,
    ConfigRejectedError,
    save_text,
    save_values,
    text_version,
)
from tests.conftest import WriteConfig
from tests.web.config_helpers import unwritable

GUIDE_HASH = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"

CONFIG = f"""\
// keep this comment
{{
  "SmtpServer": {{
    "Port": 2525, // not 25
    "MaxRecipients": 100,
    "Users": [
      {{ "UserName": "test@example.com", "Password": "{GUIDE_HASH}", "HashType": "SHA256" }}
    ]
  }},
  "RelayServers": [
    {{ "Name": "gmail", "Host": "smtp.gmail.com", "Port": 587,
       "Username": "me@gmail.com", "Password": "app-password-123" }}
  ]
}}
"""

TOML = f"""\
# keep this comment
[SmtpServer]
Port = 2525  # not 25

[[SmtpServer.Users]]
UserName = "test@example.com"
Password = "{GUIDE_HASH}"
"""


def test_save_values_keeps_comments_and_reports_restart(write_config: WriteConfig) -> None:
    """Changing two keys changes only them; the port change is listed as needing a restart."""
    path = write_config(CONFIG)
    result = save_values(path, {("SmtpServer", "MaxRecipients"): 5, ("SmtpServer", "Port"): 2626})
    text = path.read_text()
    assert "// keep this comment" in text
    assert "// not 25" in text
    assert '"MaxRecipients": 5' in text
    assert set(result.changed) == {"SmtpServer.MaxRecipients", "SmtpServer.Port"}
    assert result.restart == ["SmtpServer.Port"]
    assert load_settings(path).settings.smtp_server.max_recipients == 5


def test_save_values_in_toml_adds_a_missing_section(write_config: WriteConfig) -> None:
    """A key of a section the TOML file lacks is added; comments stay."""
    path = write_config(TOML, name="jdxmail.toml")
    result = save_values(path, {("Delivery", "RetryDelay"): 120})
    text = path.read_text()
    assert "# keep this comment" in text
    assert "# not 25" in text
    assert load_settings(path).settings.delivery.retry_delay == 120
    assert result.changed == ["Delivery.RetryDelay"]
    assert result.restart == []  # the delivery engine takes it on reload


def test_an_error_writes_nothing_and_names_key_and_line(write_config: WriteConfig) -> None:
    """A value out of range is refused with its key and line; the file is untouched."""
    path = write_config(CONFIG)
    with pytest.raises(ConfigRejectedError) as caught:
        save_values(path, {("SmtpServer", "Port"): 70000})
    assert path.read_text() == CONFIG
    finding = caught.value.findings[0]
    assert finding.key == "SmtpServer.Port"
    assert finding.line == 4
    assert finding.fix


def test_a_syntax_error_is_a_finding_with_its_line(write_config: WriteConfig) -> None:
    """Raw text that does not parse is refused with the line of the mistake."""
    path = write_config(CONFIG)
    broken = CONFIG.replace('"MaxRecipients": 100,', '"MaxRecipients": 100 oops,')
    with pytest.raises(ConfigRejectedError) as caught:
        save_text(path, broken)
    assert caught.value.findings[0].line == 5
    assert path.read_text() == CONFIG


def test_a_secret_left_empty_or_marked_is_kept(write_config: WriteConfig) -> None:
    """Saving a form whose write-only password is empty keeps the stored relay password."""
    path = write_config(CONFIG)
    save_values(
        path,
        {
            ("RelayServers", 0, "Password"): "",
            ("SmtpServer", "Users", 0, "Password"): secrets.MARKER,
            ("RelayServers", 0, "Username"): "other@gmail.com",
        },
    )
    relay = load_settings(path).settings.relay_servers[0]
    assert relay.username == "other@gmail.com"
    assert relay.password is not None
    assert relay.password.get_secret_value() == "app-password-123"
    assert GUIDE_HASH in path.read_text()


def test_redacted_text_hides_secrets_and_saves_back_unchanged(
    write_config: WriteConfig,
) -> None:
    """The editor's text holds no hash or password; saving it back (users reordered) keeps them."""
    path = write_config(CONFIG)
    shown = secrets.redact_text(read_source(path))
    assert GUIDE_HASH not in shown
    assert "app-password-123" not in shown
    assert "// keep this comment" in shown
    edited = shown.replace('"MaxRecipients": 100', '"MaxRecipients": 7')
    save_text(path, edited)
    assert path.read_text() == CONFIG.replace('"MaxRecipients": 100', '"MaxRecipients": 7')


def test_a_marker_for_a_new_user_is_an_error(write_config: WriteConfig) -> None:
    """A write-only marker where no password is stored (a renamed user) is refused."""
    path = write_config(CONFIG)
    shown = secrets.redact_text(read_source(path)).replace("test@example.com", "new@example.com")
    with pytest.raises(ConfigRejectedError) as caught:
        save_text(path, shown)
    assert caught.value.findings[0].key == "SmtpServer.Users[0].Password"
    assert path.read_text() == CONFIG


def test_view_masks_every_secret(write_config: WriteConfig) -> None:
    """The settings view shows the marker for each stored secret and never the secret."""
    path = write_config(CONFIG)
    data = secrets.view(load_settings(path).settings)
    assert data["SmtpServer"]["Users"][0]["Password"] == secrets.MARKER
    assert data["RelayServers"][0]["Password"] == secrets.MARKER
    assert GUIDE_HASH not in repr(data)
    assert "app-password-123" not in repr(data)


def test_a_file_changed_meanwhile_is_not_overwritten(write_config: WriteConfig) -> None:
    """A save based on an older version of the file is refused (a user added meanwhile stays)."""
    path = write_config(CONFIG)
    version = text_version(CONFIG)
    changed = CONFIG.replace("100", "50")
    path.write_text(changed)
    with pytest.raises(ConfigChangedError):
        save_values(path, {("SmtpServer", "Port"): 2626}, base_version=version)
    assert path.read_text() == changed


def test_restore_validates_first_and_keeps_a_backup(write_config: WriteConfig) -> None:
    """A valid restore replaces the file and keeps the old one; a bad one changes nothing."""
    path = write_config(CONFIG)
    with pytest.raises(ConfigRejectedError):
        restore_config(path, '{ "SmtpServer": { "Port": "x" } }')
    assert path.read_text() == CONFIG
    assert list(path.parent.glob("*.bak-*")) == []
    new = '{ "SmtpServer": { "Port": 2600 } }\n'
    restored = restore_config(path, new)
    assert path.read_text() == new
    assert restored.backup is not None
    assert restored.backup.name.startswith("appsettings.json.bak-")
    assert restored.backup.read_text() == CONFIG
    assert restored.backup.stat().st_mode & 0o077 == 0


def test_f1_an_unwritable_config_is_named_and_left_whole(write_config: WriteConfig) -> None:
    """JDX-F1: a config that cannot be written gets a message naming it; nothing changes."""
    path = write_config(CONFIG)
    with unwritable(path), pytest.raises(ConfigWriteError) as caught:
        save_values(path, {("SmtpServer", "MaxRecipients"): 5})
    assert f"cannot write config file {path}" in str(caught.value)
    assert "immutable" in str(caught.value)
    assert caught.value.fix
    assert path.read_text() == CONFIG
    assert [p.name for p in path.parent.iterdir()] == [path.name]


@pytest.mark.parametrize(("name", "text"), [("appsettings.json", CONFIG), ("jdxmail.toml", TOML)])
def test_keys_of_a_new_list_item_append_it(write_config: WriteConfig, name: str, text: str) -> None:
    """Keys given for the item past the end of RelayServers add a relay; comments stay."""
    path = write_config(text, name=name)
    count = len(load_settings(path).settings.relay_servers)
    save_values(
        path,
        {
            ("RelayServers", count, "Name"): "backup",
            ("RelayServers", count, "Host"): "127.0.0.1",
            ("RelayServers", count, "Port"): 2600,
            ("RelayServers", count, "Password"): "",
        },
    )
    relays = load_settings(path).settings.relay_servers
    assert [r.display_name for r in relays][-1] == "backup"
    assert relays[-1].port == 2600
    assert "keep this comment" in path.read_text()


@pytest.mark.parametrize(("name", "text"), [("appsettings.json", CONFIG), ("jdxmail.toml", TOML)])
def test_a_value_none_removes_the_key_so_its_default_applies(
    write_config: WriteConfig, name: str, text: str
) -> None:
    """Clearing a key removes it (the default applies); clearing an absent key adds nothing."""
    path = write_config(text, name=name)
    save_values(path, {("SmtpServer", "Port"): None, ("SmtpServer", "HostName"): None})
    saved = path.read_text()
    assert "2525" not in saved
    assert "HostName" not in saved
    assert "keep this comment" in saved
    assert load_settings(path).settings.smtp_server.port == 2525
    if name.endswith(".json"):
        assert saved == CONFIG.replace('    "Port": 2525, // not 25\n', "")


def test_what_needs_a_restart() -> None:
    """Listeners, folders and the first relays need a restart; users, limits and relay edits not."""
    from jdxmail.settings.model import Settings
    from jdxmail.settings.save import restart_needed

    base = Settings.model_validate({"SmtpServer": {"Port": 2525}})
    relay = {"Name": "a", "Host": "127.0.0.1"}
    with_relay = Settings.model_validate({"RelayServers": [relay]})
    cases = {
        "SmtpServer.Port": ({"SmtpServer": {"Port": 2626}}, base),
        "SmtpServer.ProxyPort": ({"SmtpServer": {"ProxyPort": 2700}}, base),
        "Paths.Spool": ({"Paths": {"Spool": "elsewhere"}}, base),
        "RelayServers": ({"RelayServers": [relay]}, base),
        "": ({"RelayServers": [{**relay, "Port": 2600}]}, with_relay),
    }
    for expected, (data, old) in cases.items():
        assert restart_needed(old, Settings.model_validate(data)) == (
            [expected] if expected else []
        )
    live = Settings.model_validate(
        {"SmtpServer": {"MaxRecipients": 5}, "Delivery": {"RetryDelay": 9}}
    )
    assert restart_needed(base, live) == []
