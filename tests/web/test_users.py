"""The Users area through the API against a real serve: the config file edited in place
(comments kept), the change applied at once (AUTH works), no hash ever returned, and
the F1 message for a config that cannot be written."""

from __future__ import annotations

from tests.web.config_helpers import (
    CONFIG_WITH_SECRETS,
    GUIDE_HASH,
    api,
    assert_no_secret,
    can_login,
    files_in,
    unwritable,
)
from tests.web.conftest import Console, MakeConsole


async def test_a_user_added_through_the_api_can_log_in_at_once(console: Console) -> None:
    """POST /api/v1/users writes the user into the file (comment kept) and AUTH works at once."""
    async with api(console.url) as http:
        assert not await can_login(console.smtp_port, "app@example.com", "s3cret pass")
        answer = await http.post(
            "/api/v1/users",
            json={"user_name": "app@example.com", "password": "s3cret pass", "hash_type": "sha256"},
        )
        assert answer.status_code == 201, answer.text
        assert answer.json()["applied"] is True
        assert [u["user_name"] for u in answer.json()["users"]] == ["app@example.com"]
        text = console.config_path.read_text()
        assert "// written by the console test fixture" in text
        assert '"UserName": "app@example.com"' in text
        assert await can_login(console.smtp_port, "app@example.com", "s3cret pass")
        assert_no_secret(answer, "s3cret pass")
        assert '"HashType": "SHA256"' in text


async def test_listing_shows_names_never_hashes(
    make_console: MakeConsole,
) -> None:
    """GET /api/v1/users and /users show the user and hash type, never the hash; no-store (F2)."""
    console = await make_console(CONFIG_WITH_SECRETS)
    async with api(console.url) as http:
        listed = await http.get("/api/v1/users")
        shown = await http.get("/users")
    assert listed.json()["users"] == [
        {
            "user_name": "test@example.com",
            "hash_type": "SHA256",
            "allowed_senders": None,
            "active": True,
        }
    ]
    assert "test@example.com" in shown.text
    for answer in (listed, shown):
        assert answer.status_code == 200
        assert answer.headers["cache-control"] == "no-store"
        assert_no_secret(answer, GUIDE_HASH)


async def test_change_password_then_remove(make_console: MakeConsole) -> None:
    """A new password works at once and the old one not; a removed user cannot log in."""
    console = await make_console(CONFIG_WITH_SECRETS)
    port = console.smtp_port
    assert await can_login(port, "test@example.com", "password")
    async with api(console.url) as http:
        changed = await http.put(
            "/api/v1/users/test@example.com/password", json={"password": "n3w-pass"}
        )
        assert changed.status_code == 200, changed.text
        assert changed.json()["users"][0]["hash_type"] == "SCRYPT"
        assert await can_login(port, "test@example.com", "n3w-pass")
        assert not await can_login(port, "test@example.com", "password")
        removed = await http.delete("/api/v1/users/test@example.com")
        assert removed.status_code == 200, removed.text
        assert removed.json()["users"] == []
        missing = await http.delete("/api/v1/users/test@example.com")
    assert not await can_login(port, "test@example.com", "n3w-pass")
    assert missing.status_code == 404
    assert "no user 'test@example.com'" in missing.json()["error"]
    assert "// console test config: keep this comment" in console.config_path.read_text()


async def test_a_duplicate_user_is_refused_with_the_finding(make_console: MakeConsole) -> None:
    """Adding a name that exists answers 422 with the key and line; the file is unchanged."""
    console = await make_console(CONFIG_WITH_SECRETS)
    async with api(console.url) as http:
        answer = await http.post(
            "/api/v1/users", json={"user_name": "TEST@example.com", "password": "x"}
        )
    assert answer.status_code == 422
    finding = answer.json()["findings"][0]
    assert finding["key"] == "SmtpServer.Users[0].UserName"
    assert finding["line"] == 10
    assert console.config_path.read_text() == CONFIG_WITH_SECRETS


async def test_f1_a_config_that_cannot_be_written(console: Console) -> None:
    """JDX-F1: an unwritable config gets a message naming the file and why; nothing is written."""
    async with api(console.url) as http:
        before = console.config_path.read_text()
        folder_before = files_in(console.tmp)
        with unwritable(console.config_path):
            answer = await http.post(
                "/api/v1/users", json={"user_name": "app@example.com", "password": "pw"}
            )
        assert answer.status_code == 409
        body = answer.json()
        assert f"cannot write config file {console.config_path}" in body["error"]
        assert "JDX-F1" in body["error"]
        assert "chattr -i" in body["fix"]
        assert console.config_path.read_text() == before
        assert files_in(console.tmp) == folder_before
        assert not await can_login(console.smtp_port, "app@example.com", "pw")


async def test_bad_requests_get_clear_answers(console: Console) -> None:
    """An empty name or password, or a hash type that does not exist, answers 400 with a fix."""
    async with api(console.url) as http:
        for body in (
            {"user_name": " ", "password": "x"},
            {"user_name": "a@b.c", "password": ""},
            {"user_name": "a@b.c", "password": "x", "hash_type": "md5"},
            {"user_name": "a@b.c", "password": "x", "hash_type": "plain"},
        ):
            answer = await http.post("/api/v1/users", json=body)
            assert answer.status_code == 400, body
            assert answer.json()["error"]
