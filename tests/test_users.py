"""`jdxmail user list|add|remove|passwd|check`: edits in place that keep comments and layout,
hashed passwords, and a clear message when the file cannot be written (row F1)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomlkit
from typer.testing import CliRunner

from jdxmail.passwords import verify_password
from jdxmail.settings.files import load_settings
from tests.conftest import WriteConfig, invoke

GUIDE_HASH = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"

COMMENTED_JSON = f"""\
// jdxmail config: keep this comment
{{
  /* the server */
  "SmtpServer": {{
    "Port": 2525, // not 25: postfix has it
    "Users": [
      {{
        "UserName": "test@example.com",
        "Password": "{GUIDE_HASH}",
        "HashType": "SHA256" // as in the guide
      }}
    ]
  }},
  "Paths": {{ "Logs": "logs" }}
}}
"""

COMMENTED_TOML = f"""\
# jdxmail config: keep this comment
[SmtpServer]
Port = 2525  # not 25

# the users
[[SmtpServer.Users]]
UserName = "test@example.com"  # first user
Password = "{GUIDE_HASH}"
HashType = "SHA256"

[Paths]
Logs = "logs"
"""


def users_of(path: Path) -> dict[str, str]:
    """UserName → stored password of the config at *path*."""
    return {
        u.user_name: u.password.get_secret_value()
        for u in load_settings(path).settings.smtp_server.users
    }


@pytest.mark.parametrize(
    ("name", "text"), [("appsettings.json", COMMENTED_JSON), ("jdxmail.toml", COMMENTED_TOML)]
)
def test_add_passwd_remove_keep_the_rest_of_the_file(
    runner: CliRunner, write_config: WriteConfig, name: str, text: str
) -> None:
    """Adding, re-passwording and removing users changes only those users; comments stay."""
    path = write_config(text, name=name)
    code, _, err = invoke(
        runner, "user", "add", "bob@example.com", "--password-stdin", input="s3cret\n"
    )
    assert code == 0, err
    stored = users_of(path)
    assert set(stored) == {"test@example.com", "bob@example.com"}
    assert stored["bob@example.com"].startswith("scrypt:")
    assert verify_password("s3cret", stored["bob@example.com"])
    assert "s3cret" not in path.read_text()

    code, _, _ = invoke(
        runner,
        "user",
        "passwd",
        "test@example.com",
        "-t",
        "sha256",
        "--password-stdin",
        input="new\n",
    )
    assert code == 0
    assert verify_password("new", users_of(path)["test@example.com"])

    code, _, _ = invoke(runner, "user", "remove", "bob@example.com", "--yes")
    assert code == 0
    final = path.read_text()
    assert set(users_of(path)) == {"test@example.com"}
    # Everything but the one changed hash is as it was, byte for byte.
    assert final.replace(users_of(path)["test@example.com"], GUIDE_HASH) == text


def test_toml_round_trip_is_exact_when_nothing_changes(write_config: WriteConfig) -> None:
    """tomlkit writes back an unchanged TOML file byte for byte."""
    assert tomlkit.dumps(tomlkit.parse(COMMENTED_TOML)) == COMMENTED_TOML


def test_add_creates_a_config_when_there_is_none(runner: CliRunner, tmp_path: Path) -> None:
    """With no config file, `user add` creates ./appsettings.json from the defaults, mode 600."""
    code, _, err = invoke(runner, "user", "add", "me@example.com", "--password-stdin", input="pw\n")
    assert code == 0
    path = tmp_path / "appsettings.json"
    assert str(path.name) in err
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    settings = load_settings(path).settings
    assert settings.smtp_server.port == 2525
    assert [u.user_name for u in settings.smtp_server.users] == ["me@example.com"]
    assert "development inbox" in path.read_text()


def test_add_under_jdx_wrapper_and_without_users_key(
    runner: CliRunner, write_config: WriteConfig
) -> None:
    """A user is added inside "Jdx": {"SmtpServer": {…}} even when Users does not exist yet."""
    path = write_config('{\n  "Jdx": {\n    "SmtpServer": {\n      "Port": 2525\n    }\n  }\n}\n')
    code, _, _ = invoke(
        runner,
        "user",
        "add",
        "a@example.com",
        "-t",
        "sha256",
        "--password-stdin",
        input="password\n",
    )
    assert code == 0
    data = json.loads(path.read_text())
    assert data["Jdx"]["SmtpServer"]["Users"] == [
        {"UserName": "a@example.com", "Password": GUIDE_HASH, "HashType": "SHA256"}
    ]


def test_duplicate_unknown_and_unconfirmed(runner: CliRunner, write_config: WriteConfig) -> None:
    """Adding an existing user, touching a missing one, or removing without --yes off a TTY fail clearly."""
    write_config(COMMENTED_JSON)
    code, _, err = invoke(
        runner, "user", "add", "TEST@example.com", "--password-stdin", input="x\n"
    )
    assert code == 1
    assert "already exists" in err
    code, _, err = invoke(runner, "user", "passwd", "ghost", "--password-stdin", input="x\n")
    assert code == 1
    assert "no user 'ghost'" in err
    code, _, err = invoke(runner, "user", "remove", "test@example.com", input="")
    assert code == 2
    assert "--yes" in err


def test_empty_user_name_is_refused(runner: CliRunner, write_config: WriteConfig) -> None:
    """`user add ''` exits 2 before asking for a password, and the file is unchanged."""
    path = write_config(COMMENTED_JSON)
    code, _, err = invoke(runner, "user", "add", " ", "--password-stdin", input="pw\n")
    assert code == 2
    assert "user name is empty" in err
    assert path.read_text() == COMMENTED_JSON


def test_list_never_shows_hashes(runner: CliRunner, write_config: WriteConfig) -> None:
    """`user list` shows names and hash types, never the stored hash, in text and JSON."""
    write_config(COMMENTED_JSON)
    code, out, _ = invoke(runner, "user", "list")
    assert code == 0
    assert "test@example.com" in out
    assert "SHA256" in out
    assert GUIDE_HASH not in out
    code, out, _ = invoke(runner, "user", "list", "--json")
    assert json.loads(out)["users"] == [
        {"UserName": "test@example.com", "HashType": "SHA256", "AllowedSenders": None}
    ]


def test_check_tells_match_and_the_d2_mistake(runner: CliRunner, write_config: WriteConfig) -> None:
    """`user check` says match for the password, no match otherwise, and spots a typed hash (D2)."""
    write_config(COMMENTED_JSON)
    code, out, _ = invoke(
        runner, "user", "check", "test@example.com", "--password-stdin", input="password\n"
    )
    assert (code, out.split(":")[0]) == (0, "match")
    code, out, _ = invoke(
        runner, "user", "check", "test@example.com", "--password-stdin", input="wrong\n"
    )
    assert (code, out.split(":")[0]) == (1, "no match")
    code, out, _ = invoke(
        runner, "user", "check", "test@example.com", "--password-stdin", input=GUIDE_HASH + "\n"
    )
    assert code == 1
    assert "JDX-D2" in out


def test_check_reports_b2_instead_of_a_wrong_answer(
    runner: CliRunner, write_config: WriteConfig
) -> None:
    """When the stored value is not of its HashType, `user check` says so (B2) and exits 1."""
    write_config(
        '{"SmtpServer": {"Users": [{"UserName": "a", "Password": "password", "HashType": "SHA256"}]}}'
    )
    code, _, err = invoke(runner, "user", "check", "a", "--password-stdin", input="password\n")
    assert code == 1
    assert "JDX-B2" in err


def test_an_edit_that_would_break_the_config_is_not_written(
    runner: CliRunner, write_config: WriteConfig
) -> None:
    """If the file already has errors, the edit is refused and the file is left untouched."""
    text = '{"SmtpServer": {"Port": 99999, "Users": []}}'
    path = write_config(text)
    code, _, err = invoke(runner, "user", "add", "a", "--password-stdin", input="pw\n")
    assert code == 1
    assert "SmtpServer.Port" in err
    assert path.read_text() == text


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder outside the test's private tmp dir that another user can enter."""
    folder = Path(tempfile.mkdtemp(prefix="jdxmail-f1-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _as_unprivileged(args: list[str]) -> tuple[int, str]:
    """Run `jdxmail ARGS` in a forked child as an unprivileged user; (exit code, stderr).

    Root may write any file, so the child drops to nobody first. It is forked, not
    exec'ed, because the interpreter may live where nobody cannot read it.
    """
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(reader)
        code, err = 99, ""
        try:
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            code, _, err = invoke(CliRunner(), *args, input="pw\n")
        except BaseException as exc:  # report anything to the parent, never run its tests
            err = repr(exc)
        finally:
            os.write(writer, json.dumps([code, err]).encode())
            os._exit(0)
    os.close(writer)
    with os.fdopen(reader, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    code, err = json.loads(data)
    return int(code), str(err)


def test_f1_read_only_config_names_file_and_permission(shared_dir: Path) -> None:
    """JDX-F1: a config this user cannot write gets a message naming the file, its mode and owner."""
    path = shared_dir / "appsettings.json"
    path.write_text(COMMENTED_JSON)
    path.chmod(0o444)
    code, err = _as_unprivileged(
        ["user", "add", "x@example.com", "--config", str(path), "--password-stdin"]
    )
    assert code == 1, err
    assert f"cannot write config file {path}" in err
    assert "mode 0444" in err
    assert "chmod u+w" in err
    assert "JDX-F1" in err
    assert path.read_text() == COMMENTED_JSON


def test_f1_read_only_folder(shared_dir: Path) -> None:
    """JDX-F1: a writable file in a folder this user cannot write is reported with the folder."""
    folder = shared_dir / "etc"
    folder.mkdir()
    path = folder / "appsettings.json"
    path.write_text(COMMENTED_JSON)
    path.chmod(0o666)
    folder.chmod(0o555)
    code, err = _as_unprivileged(
        ["user", "add", "x@example.com", "--config", str(path), "--password-stdin"]
    )
    assert code == 1, err
    assert f"the folder {folder} is not writable" in err
    assert path.read_text() == COMMENTED_JSON


@pytest.mark.parametrize(
    ("name", "text"), [("appsettings.json", COMMENTED_JSON), ("jdxmail.toml", COMMENTED_TOML)]
)
def test_console_users_are_managed_apart_from_smtp_users(
    runner: CliRunner, write_config: WriteConfig, name: str, text: str
) -> None:
    """`user … --console` adds, lists, checks, re-passwords and removes WebUI.Users only;
    the SMTP users and the file's comments stay as they were."""
    path = write_config(text, name=name)
    code, _, err = invoke(
        runner, "user", "add", "--console", "admin", "--password-stdin", input="console-pw\n"
    )
    assert code == 0, err
    assert "added console user 'admin'" in err
    assert "now ask for a login" in err
    settings = load_settings(path).settings
    assert [u.user_name for u in settings.web_ui.users] == ["admin"]
    assert verify_password("console-pw", settings.web_ui.users[0].password.get_secret_value())
    assert set(users_of(path)) == {"test@example.com"}

    code, out, _ = invoke(runner, "user", "list", "--console", "--json")
    listed = json.loads(out)
    assert (code, listed["section"], [u["UserName"] for u in listed["users"]]) == (
        0,
        "WebUI",
        ["admin"],
    )
    code, out, _ = invoke(runner, "user", "list")
    assert "admin" not in out
    assert "test@example.com" in out

    code, out, _ = invoke(
        runner, "user", "check", "--console", "admin", "--password-stdin", input="console-pw\n"
    )
    assert (code, out.split(":")[0]) == (0, "match")
    code, _, err = invoke(
        runner, "user", "check", "--console", "test@example.com", "--password-stdin", input="x\n"
    )
    assert code == 1
    assert "no console user 'test@example.com'" in err
    assert "jdxmail user list --console" in err

    code, _, _ = invoke(
        runner, "user", "passwd", "--console", "admin", "--password-stdin", input="other\n"
    )
    assert code == 0
    assert verify_password(
        "other", load_settings(path).settings.web_ui.users[0].password.get_secret_value()
    )
    code, _, err = invoke(
        runner, "user", "add", "--console", "ADMIN", "--password-stdin", input="x\n"
    )
    assert code == 1
    assert "console user 'ADMIN' already exists" in err

    code, _, err = invoke(runner, "user", "remove", "--console", "admin", "--yes")
    assert code == 0, err
    assert load_settings(path).settings.web_ui.users == []
    assert set(users_of(path)) == {"test@example.com"}
    assert "keep this comment" in path.read_text()
