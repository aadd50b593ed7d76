"""Editing a config file in place: users added, removed, re-passworded.

Only the edited value changes: JSON keeps every comment, key order and indentation
outside it; TOML is edited through tomlkit, which keeps comments and layout. The
result is validated before it is written, and written atomically (temporary file,
fsync, rename), keeping the file's permissions and owner.

Every writer (``jdxmail user add|remove|passwd``, the web console) goes through
edit_config, which holds an exclusive lock (flock on ``.NAME.lock`` beside the file)
from reading the file to replacing it, so edits made at the same time all land.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.items import AoT, Table

from jdxmail.findings import Finding, KeyPath, Severity
from jdxmail.settings import jsonc, tomlfile
from jdxmail.settings.files import (
    ConfigError,
    ConfigInvalidError,
    ConfigSource,
    inspect_source,
    read_source,
    source_from_text,
)
from jdxmail.settings.model import DEFAULT_CONFIG_TEXT, Settings, UserSettings

__all__ = [
    "LOCK_WAIT",
    "ConfigLockedError",
    "ConfigWriteError",
    "UserEdit",
    "UserNotFoundError",
    "config_lock",
    "edit_config",
    "edit_users",
    "lock_path",
    "user_kind",
    "user_option",
]

#: seconds a writer waits for another writer of the same config to finish
LOCK_WAIT = 15.0


class ConfigWriteError(ConfigError, OSError):
    """The config file cannot be written (troubleshooting row F1)."""

    def __init__(self, path: Path, reason: str, fix: str) -> None:
        super().__init__(f"cannot write config file {path}: {reason}")
        self.path = path
        self.reason = reason
        self.fix = fix


class ConfigLockedError(ConfigWriteError):
    """Another process held the config's lock for longer than the wait allows."""


class UserNotFoundError(ConfigError, KeyError):
    """No user of that name is in the config."""

    def __init__(self, name: str, source: ConfigSource, section: str = "SmtpServer") -> None:
        super().__init__(f"no {user_kind(section)} {name!r} in {source.name}")
        self.name = name

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class UserEdit:
    """One change to SmtpServer.Users (or WebUI.Users, the console's): add, remove, or
    replace a user's password."""

    action: str  # "add", "remove" or "passwd"
    user_name: str
    password: str | None = None  # the stored form (already hashed)
    hash_type: str | None = None
    #: the section whose Users list is edited: "SmtpServer" or "WebUI"
    section: str = "SmtpServer"


def user_kind(section: str) -> str:
    """What a user of *section*'s Users is called in messages."""
    return "console user" if section == "WebUI" else "user"


def user_option(section: str) -> str:
    """The ``jdxmail user`` option that edits *section*'s Users ("" for SmtpServer)."""
    return " --console" if section == "WebUI" else ""


def _users_in(settings: Settings | None, section: str) -> list[UserSettings]:
    """The Users list of *section* ("SmtpServer" or "WebUI") in *settings*."""
    if settings is None:
        return []
    return settings.web_ui.users if section == "WebUI" else settings.smtp_server.users


def _user_index(source: ConfigSource, name: str, section: str) -> int | None:
    settings, _ = inspect_source(source)
    for index, user in enumerate(_users_in(settings, section)):
        if user.user_name.casefold() == name.casefold():
            return index
    return None


def _edit_json(text: str, prefix: KeyPath, edit: UserEdit, index: int | None) -> str:
    section_path = (*prefix, edit.section)
    users_path = (*section_path, "Users")
    root = jsonc.parse(text)
    if edit.action == "add":
        entry = {"UserName": edit.user_name, "Password": edit.password, "HashType": edit.hash_type}
        if jsonc.find(root, section_path)[0] is None:
            return jsonc.set_member(text, prefix, edit.section, {"Users": [entry]})
        if jsonc.find(root, users_path)[0] is None:
            return jsonc.set_member(text, section_path, "Users", [entry])
        return jsonc.append_item(text, users_path, entry)
    assert index is not None
    if edit.action == "remove":
        return jsonc.remove_item(text, users_path, index)
    text = jsonc.set_member(text, (*users_path, index), "Password", edit.password)
    return jsonc.set_member(text, (*users_path, index), "HashType", edit.hash_type)


def _edit_toml(text: str, prefix: KeyPath, edit: UserEdit, index: int | None) -> str:
    document = tomlfile.parse(text)
    container: Any = tomlfile.lookup(document, prefix) if prefix else document
    try:
        smtp = tomlfile.lookup(container, (edit.section,))
    except KeyError:
        smtp = tomlkit.table()
        container.add(edit.section, smtp)
        smtp = tomlfile.lookup(container, (edit.section,))
    try:
        users = tomlfile.lookup(smtp, ("Users",))
    except KeyError:
        users = None
    if edit.action == "add":
        fields = {"UserName": edit.user_name, "Password": edit.password, "HashType": edit.hash_type}
        if users is None or isinstance(users, AoT):
            table = tomlkit.table()
            table.update(fields)
            # a blank line after the new table keeps it apart from the next section
            table.add(tomlkit.nl())
            if users is None:
                users = tomlkit.aot()
                smtp.add("Users", users)
            users.append(table)
        else:
            inline = tomlkit.inline_table()
            inline.update(fields)
            users.append(inline)
        return tomlkit.dumps(document)
    assert index is not None
    assert users is not None
    if edit.action == "remove":
        del users[index]
        return tomlkit.dumps(document)
    user: Table | Any = users[index]
    for key, value in (("Password", edit.password), ("HashType", edit.hash_type)):
        existing = [k for k in user if str(k).casefold() == key.casefold()]
        user[existing[0] if existing else key] = value
    return tomlkit.dumps(document)


#: the config locks this thread holds (config_lock is reentrant per thread)
_held = threading.local()


def lock_path(path: Path) -> Path:
    """The lock file of the config *path*: ``.NAME.lock`` in the same folder."""
    real = Path(os.path.realpath(path))
    return real.with_name(f".{real.name}.lock")


@contextlib.contextmanager
def config_lock(path: Path, wait: float = LOCK_WAIT) -> Iterator[None]:
    """Hold the exclusive lock of the config *path* (flock on its lock file).

    Raises ConfigLockedError when another writer keeps it for more than *wait*
    seconds, and ConfigWriteError when the lock file cannot be made.
    """
    lock = lock_path(path)
    held: set[Path] = _held.__dict__.setdefault("locks", set())
    if lock in held:
        # this thread holds it already (save_values → save_text): flock is per open
        # file, so taking it again here would wait for ourselves
        yield
        return
    _check_writable(path)  # the file's own permission problem first, as row F1 says
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except PermissionError:
        raise ConfigWriteError(
            path,
            f"the folder {lock.parent} is not writable by this user (for the lock file)",
            f"give this user write access to {lock.parent}, or run as its owner "
            f"({_owner(lock.parent)})",
        ) from None
    except OSError as exc:
        raise ConfigWriteError(
            path, exc.strerror or str(exc), "check the disk and the folder"
        ) from None
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise ConfigLockedError(
                        path,
                        f"another process has been editing it for over {wait:.0f} s "
                        f"(it holds {lock})",
                        "wait for the other `jdxmail user` command or console edit to end, "
                        "then try again",
                    ) from None
                time.sleep(0.02)
        held.add(lock)
        try:
            yield
        finally:
            held.discard(lock)
    finally:
        os.close(fd)  # closing releases the lock


def _write_atomically(path: Path, text: str) -> None:
    """Replace *path* with *text*, or create it; raise ConfigWriteError (row F1).

    The new file gets the old one's mode and (where this user may set it) owner and
    group; a symlinked config is replaced at its target, so the link stays.
    """
    path = Path(os.path.realpath(path))
    folder = path.parent
    mode = None
    owner: tuple[int, int] | None = None
    with contextlib.suppress(FileNotFoundError):
        info = path.stat()
        mode = stat.S_IMODE(info.st_mode)
        owner = (info.st_uid, info.st_gid)
    _check_writable(path)
    try:
        handle, temp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    except PermissionError:
        raise ConfigWriteError(
            path,
            f"the folder {folder} is not writable by this user",
            f"give this user write access to {folder}, or run as its owner ({_owner(folder)})",
        ) from None
    except OSError as exc:
        raise ConfigWriteError(
            path, exc.strerror or str(exc), "check the disk and the folder"
        ) from None
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as out:
            out.write(text)
            out.flush()
            if owner is not None:
                _keep_owner(out.fileno(), *owner)
            os.fchmod(out.fileno(), mode if mode is not None else 0o600)
            os.fsync(out.fileno())
        os.replace(temp, path)
        _fsync_folder(folder)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise ConfigWriteError(
            path, exc.strerror or str(exc), "check the disk and the folder"
        ) from None


def _check_writable(path: Path) -> None:
    """Raise ConfigWriteError (row F1) when *path* exists and this user may not write it."""
    if path.exists() and not os.access(path, os.W_OK):
        if _mode_allows_writing(path):
            raise ConfigWriteError(path, *_locked_reason(path))
        owner = _owner(path)
        mode = stat.S_IMODE(path.stat().st_mode)
        raise ConfigWriteError(
            path,
            f"permission denied (mode {mode:04o}, owner {owner})",
            f"make it writable with `chmod u+w {path}`, or run as {owner}",
        )


def _keep_owner(fd: int, uid: int, gid: int) -> None:
    """Give the new file the old owner and group, as far as this user may."""
    if (uid, gid) == (os.geteuid(), os.getegid()):
        return
    try:
        os.fchown(fd, uid, gid)
    except PermissionError:
        # not root: the group can still be kept when this user is in it
        with contextlib.suppress(PermissionError):
            os.fchown(fd, -1, gid)


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable (best effort: some filesystems refuse it)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _mode_allows_writing(path: Path) -> bool:
    """True when the permission bits let this user write *path* (root, or the owner
    with u+w): then something else forbids it."""
    info = path.stat()
    return os.geteuid() == 0 or (info.st_uid == os.geteuid() and bool(info.st_mode & stat.S_IWUSR))


def _locked_reason(path: Path) -> tuple[str, str]:
    """Reason and fix when the mode allows writing but the system does not."""
    with contextlib.suppress(OSError):
        if os.statvfs(path).f_flag & os.ST_RDONLY:
            return (
                "the file system it is on is mounted read-only",
                "remount it read-write, or copy the config to a writable folder and use --config",
            )
    return (
        "the file is immutable (chattr +i) or locked by the system",
        f"see `lsattr {path}`; remove the flag with `chattr -i {path}` if it was set on purpose",
    )


def _owner(path: Path) -> str:
    try:
        return path.owner()
    except (KeyError, OSError, NotImplementedError):
        return "its owner"


def edit_config(
    path: Path,
    change: Callable[[ConfigSource], str],
    *,
    create: bool = False,
    wait: float = LOCK_WAIT,
) -> ConfigSource:
    """Apply *change* (current source → new text) to the config at *path*, under its lock.

    The one way jdxmail writes a config: the file is read, changed, validated and
    replaced while the lock is held, so concurrent edits never lose each other.
    With *create*, a missing file starts as the built-in default config (JSON or
    TOML by the file's suffix). Raises ConfigFileError/ConfigParseError when the file
    cannot be read, ConfigInvalidError when the result would not be valid,
    ConfigLockedError when another writer holds the lock too long, and
    ConfigWriteError (row F1) when it cannot be written; *change* may raise any
    ConfigError of its own.
    """
    with config_lock(path, wait):
        if create and not path.exists():
            text = DEFAULT_CONFIG_TEXT
            if path.suffix.lower() == ".toml":
                text = _default_toml()
            source = source_from_text(path, text)
        else:
            source = read_source(path)
        new_text = change(source)
        new_source = source_from_text(path, new_text)
        settings, findings = inspect_source(new_source)
        if settings is None:
            raise ConfigInvalidError(new_source, findings)
        _write_atomically(path, new_text)
    return new_source


def edit_users(
    path: Path, edit: UserEdit, *, create: bool = False, wait: float = LOCK_WAIT
) -> ConfigSource:
    """Apply *edit* to the config file at *path* (through edit_config) and return the
    new source.

    Raises what edit_config raises, and UserNotFoundError / ConfigInvalidError (a
    duplicate name) for an edit that does not fit the users in the file.
    """
    return edit_config(path, lambda source: _users_text(source, edit), create=create, wait=wait)


def _users_text(source: ConfigSource, edit: UserEdit) -> str:
    index = _user_index(source, edit.user_name, edit.section)
    if edit.action == "add" and index is not None:
        raise ConfigInvalidError(
            source,
            [_duplicate_finding(source, edit.user_name, index, edit.section)],
        )
    if edit.action != "add" and index is None:
        raise UserNotFoundError(edit.user_name, source, edit.section)
    editor = _edit_toml if source.format == "toml" else _edit_json
    return editor(source.text, source.prefix, edit, index)


def _default_toml() -> str:
    return (
        "# jdxmail config (TOML). Keys as in appsettings.json; see docs/configuration.md.\n"
        "[SmtpServer]\n"
        "Enabled = true\n"
        'BindAddress = "127.0.0.1"\n'
        "Port = 2525\n"
        'TrustedNetworks = ["127.0.0.0/8", "::1/128"]\n\n'
    )


def _duplicate_finding(source: ConfigSource, name: str, index: int, section: str) -> Finding:
    path = (section, "Users", index, "UserName")
    return Finding(
        Severity.ERROR,
        "users.duplicate",
        f"{user_kind(section)} {name!r} already exists",
        f"change its password with `jdxmail user passwd{user_option(section)} {name}`",
        path,
        source.line_of(path),
    )


def user_from(source: ConfigSource, name: str, section: str = "SmtpServer") -> UserSettings:
    """The user *name* of *source* (of *section*'s Users); raise UserNotFoundError."""
    settings, _ = inspect_source(source)
    for user in _users_in(settings, section):
        if user.user_name.casefold() == name.casefold():
            return user
    raise UserNotFoundError(name, source, section)
