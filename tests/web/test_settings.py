"""The Settings area through the API against a real serve: values saved in place with
comments kept and applied at once, errors refused with key/line/fix and nothing
written, write-only secrets, the restart list, and F1."""

from __future__ import annotations

from typing import Any

import aiosmtplib
import pytest

from jdxmail.settings.files import nested_model
from jdxmail.settings.model import RelaySettings, Settings, section_aliases
from jdxmail.web.settings import _RELAY_FIELDS, GROUPS
from tests.web.config_helpers import (
    CONFIG_WITH_SECRETS,
    GUIDE_HASH,
    RELAY_SECRET,
    api,
    assert_no_secret,
    can_login,
    files_in,
    unwritable,
)
from tests.web.conftest import Console, MakeConsole

MARKER = "<write-only: unchanged>"


async def test_a_saved_value_changes_the_file_and_applies_at_once(
    make_console: MakeConsole,
) -> None:
    """MaxRecipients saved from the console is in the file (comments kept) and enforced at once."""
    console = await make_console(CONFIG_WITH_SECRETS)
    async with api(console.url) as http:
        version = (await http.get("/api/v1/settings")).json()["version"]
        answer = await http.put(
            "/api/v1/settings",
            json={"values": {"SmtpServer.MaxRecipients": 1}, "version": version},
        )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["changed"] == ["SmtpServer.MaxRecipients"]
    assert body["restart"] == []
    assert body["applied"] is True
    text = console.config_path.read_text()
    assert '"MaxRecipients": 1,' in text
    assert "// the dev port" in text
    assert GUIDE_HASH in text
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=console.smtp_port, timeout=10)
    await client.connect()
    await client.mail("a@mx.test")
    await client.rcpt("b@localhost")
    with pytest.raises(aiosmtplib.SMTPRecipientRefused) as refused:
        await client.rcpt("c@localhost")
    assert refused.value.code == 452
    await client.quit()


async def test_a_listener_change_is_saved_and_named_as_needing_a_restart(console: Console) -> None:
    """A new Port is written but the answer (and the page) says it needs a restart."""
    async with api(console.url) as http:
        answer = await http.put("/api/v1/settings", json={"values": {"SmtpServer.Port": 2626}})
        assert answer.status_code == 200, answer.text
        assert answer.json()["restart"] == ["SmtpServer.Port"]
        assert '"Port": 2626' in console.config_path.read_text()
        shown = await http.get("/settings")
        assert "Restart needed" in shown.text
        assert "SmtpServer.Port" in shown.text


async def test_an_error_is_refused_with_key_line_and_fix_and_nothing_written(
    make_console: MakeConsole,
) -> None:
    """A port out of range answers 422 with the finding (key, line, fix); the file is untouched."""
    console = await make_console(CONFIG_WITH_SECRETS)
    async with api(console.url) as http:
        answer = await http.put(
            "/api/v1/settings",
            json={"values": {"SmtpServer.Port": 70000, "SmtpServer.MaxRecipients": 5}},
        )
    assert answer.status_code == 422
    finding = answer.json()["findings"][0]
    assert finding["key"] == "SmtpServer.Port"
    assert finding["line"] == 5
    assert "65535" in finding["fix"]
    assert console.config_path.read_text() == CONFIG_WITH_SECRETS
    assert console.app.settings.smtp_server.max_recipients == 100


async def test_a_semantic_finding_refuses_the_save_too(console: Console) -> None:
    """validate-config's checks apply: a certificate file that does not exist is refused."""
    async with api(console.url) as http:
        before = console.config_path.read_text()
        answer = await http.put(
            "/api/v1/settings",
            json={
                "values": {
                    "SmtpServer.Tls.CertFile": "missing.pem",
                    "SmtpServer.Tls.KeyFile": "missing.key",
                }
            },
        )
        assert answer.status_code == 422, answer.text
        keys = {f["key"] for f in answer.json()["findings"] if f["severity"] == "error"}
        assert keys & {"SmtpServer.Tls.CertFile", "SmtpServer.Tls.KeyFile"}
        assert console.config_path.read_text() == before


async def test_secrets_are_write_only(make_console: MakeConsole) -> None:
    """No response holds a hash or relay password; saving with the secret left empty keeps it."""
    console = await make_console(CONFIG_WITH_SECRETS)
    async with api(console.url) as http:
        answers = [
            await http.get("/settings"),
            await http.get("/api/v1/settings"),
            await http.get("/api/v1/settings/raw"),
        ]
        raw = answers[2].json()
        assert MARKER in raw["text"]
        answers.append(
            await http.put(
                "/api/v1/settings",
                json={
                    "values": {
                        "RelayServers[0].Password": "",
                        "RelayServers[0].Username": "other",
                    }
                },
            )
        )
        raw = (await http.get("/api/v1/settings/raw")).json()  # the file after that save
        edited = raw["text"].replace('"MaxRecipients": 100', '"MaxRecipients": 9')
        answers.append(
            await http.put("/api/v1/settings/raw", json={"text": edited, "version": raw["version"]})
        )
    for answer in answers:
        assert answer.status_code == 200, answer.text
        assert_no_secret(answer, GUIDE_HASH, RELAY_SECRET)
    text = console.config_path.read_text()
    assert GUIDE_HASH in text
    assert RELAY_SECRET in text
    assert '"MaxRecipients": 9' in text
    assert '"Username": "other"' in text
    assert await can_login(console.smtp_port, "test@example.com", "password")


async def test_raw_text_with_a_syntax_error_names_the_line(console: Console) -> None:
    """The raw editor's text that does not parse answers 422 with the line; nothing written."""
    async with api(console.url) as http:
        before = console.config_path.read_text()
        broken = before.replace('"Port": 2525,', '"Port": 2525 oops')
        checked = await http.post("/api/v1/settings/check", json={"text": broken})
        assert checked.json()["valid"] is False
        answer = await http.put("/api/v1/settings/raw", json={"text": broken})
        assert answer.status_code == 422
        assert answer.json()["findings"][0]["line"] == 5
        assert console.config_path.read_text() == before


async def test_a_file_changed_since_it_was_opened_is_not_overwritten(console: Console) -> None:
    """A save based on an older version (the file was edited meanwhile) is refused with 409."""
    async with api(console.url) as http:
        version = (await http.get("/api/v1/settings/raw")).json()["version"]
        changed = console.config_path.read_text().replace("2525", "2527")
        console.config_path.write_text(changed)
        answer = await http.put(
            "/api/v1/settings", json={"values": {"SmtpServer.MaxRecipients": 3}, "version": version}
        )
        assert answer.status_code == 409
        assert "changed" in answer.json()["error"]
        assert console.config_path.read_text() == changed


async def test_f1_settings_that_cannot_be_written(console: Console) -> None:
    """JDX-F1: saving into an unwritable config names the file; nothing changes or is left."""
    async with api(console.url) as http:
        before = console.config_path.read_text()
        folder = files_in(console.tmp)
        with unwritable(console.config_path):
            answer = await http.put(
                "/api/v1/settings", json={"values": {"SmtpServer.MaxRecipients": 3}}
            )
        assert answer.status_code == 409
        assert f"cannot write config file {console.config_path}" in answer.json()["error"]
        assert "JDX-F1" in answer.json()["error"]
        assert console.config_path.read_text() == before
        assert files_in(console.tmp) == folder
        assert console.app.settings.smtp_server.max_recipients == 100


async def test_unknown_keys_and_bad_bodies(console: Console) -> None:
    """A misspelt key is refused with a did-you-mean; a body without values gets 400."""
    async with api(console.url) as http:
        typo = await http.put("/api/v1/settings", json={"values": {"SmtpServer.MaxRecipient": 3}})
        assert typo.status_code == 422
        assert "MaxRecipients" in typo.json()["findings"][0]["message"]
        empty = await http.put("/api/v1/settings", json={"values": {}})
        assert empty.status_code == 400
        bad_key = await http.put("/api/v1/settings", json={"values": {"a..b[": 1}})
        assert bad_key.status_code == 400


async def test_a_relay_added_from_the_form_is_appended_and_applied(
    make_console: MakeConsole,
) -> None:
    """Keys of the item after the last relay add a relay (comments kept), applied on reload."""
    console = await make_console(CONFIG_WITH_SECRETS)
    async with api(console.url) as http:
        answer = await http.put(
            "/api/v1/settings",
            json={
                "values": {
                    "RelayServers[1].Name": "backup",
                    "RelayServers[1].Host": "127.0.0.1",
                    "RelayServers[1].Port": 2601,
                    "RelayServers[1].Password": "second-secret",
                }
            },
        )
        shown = await http.get("/api/v1/settings")
    assert answer.status_code == 200, answer.text
    assert answer.json()["changed"] == ["RelayServers"]
    assert answer.json()["restart"] == []
    assert [r.display_name for r in console.app.settings.relays] == ["upstream", "backup"]
    text = console.config_path.read_text()
    assert "// console test config: keep this comment" in text
    assert '"Name": "backup"' in text
    assert "second-secret" in text
    assert_no_secret(shown, "second-secret", RELAY_SECRET)
    assert [r["Name"] for r in shown.json()["settings"]["RelayServers"]] == ["upstream", "backup"]


def test_every_form_field_is_a_key_of_the_settings_model() -> None:
    """Each field of the settings forms names a real config key (a renamed key fails here)."""

    def known(model: type[Any], key: tuple[str | int, ...]) -> bool:
        for part in key:
            entry = section_aliases(model).get(str(part).casefold())
            if entry is None or entry[0] != part:
                return False
            inner, _ = nested_model(entry[1])
            model = inner if inner is not None else model
        return True

    fields = [f.key for _, _, _, group in GROUPS for f in group]
    assert fields
    assert all(known(Settings, key) for key in fields), fields
    assert all(known(RelaySettings, (key,)) for key, *_ in _RELAY_FIELDS)
