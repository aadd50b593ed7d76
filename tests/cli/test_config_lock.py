"""Config edits from several processes at once: every edit lands, the file keeps its
comments, mode and ownership (issue 17)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from jdxmail.settings.edit import ConfigLockedError, UserEdit, config_lock, edit_users
from jdxmail.settings.files import load_settings
from tests.conftest import WriteConfig

COMMENTED = """\
// provisioning target: keep this comment
{
  "SmtpServer": {
    "Port": 2525, // not 25
    "Users": []
  }
}
"""


def _jdxmail(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "jdxmail", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_parallel_user_add_keeps_every_user(write_config: WriteConfig) -> None:
    """Eight `jdxmail user add` run at once all land in the file (none is lost)."""
    path = write_config(COMMENTED, mode=0o640)
    names = [f"app{i}@example.com" for i in range(8)]
    procs = [
        _jdxmail("user", "add", name, "--config", str(path), "--type", "sha256", "--password-stdin")
        for name in names
    ]
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(b"secret\n")
        proc.stdin.close()
    results = [(proc.wait(60), proc.stderr.read().decode()) for proc in procs if proc.stderr]
    for code, err in results:
        assert code == 0, err
        assert "added user" in err
    users = {u.user_name for u in load_settings(path).settings.smtp_server.users}
    assert users == set(names)
    text = path.read_text()
    assert "// provisioning target: keep this comment" in text
    assert "// not 25" in text
    assert path.stat().st_mode & 0o777 == 0o640
    assert path.stat().st_uid == os.getuid()


def test_writer_that_cannot_get_the_lock_gets_a_clear_error(write_config: WriteConfig) -> None:
    """A writer kept waiting by another edit (here another thread) gives up with a
    message naming the lock, and the file is left as it was."""
    path = write_config(COMMENTED)
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with config_lock(path):
            holding.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holding.wait(30)
        with pytest.raises(ConfigLockedError) as caught:
            edit_users(path, UserEdit("add", "late@example.com", "x" * 64, "SHA256"), wait=0.05)
    finally:
        release.set()
        holder.join(30)
    assert "another process has been editing it" in str(caught.value)
    assert caught.value.fix
    assert path.read_text() == COMMENTED


def test_symlinked_config_is_edited_at_its_target(write_config: WriteConfig) -> None:
    """Editing through a symlink changes the target file and leaves the link a link."""
    target = write_config(COMMENTED, name="real.json")
    link = target.with_name("appsettings.json")
    link.symlink_to(target.name)
    edit_users(link, UserEdit("add", "a@example.com", "x" * 64, "PLAIN"))
    assert link.is_symlink()
    assert "a@example.com" in target.read_text()
