"""Backup and restore of the config file.

A backup is the file as it is, byte for byte. A restore validates the new text first
(as validate-config does), keeps the current file next to it as
``<name>.bak-YYYYmmdd-HHMMSS`` and only then replaces it atomically; a restore with an
error, or a backup copy that cannot be written, leaves everything as it was.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

from jdxmail.settings import secrets
from jdxmail.settings.edit import ConfigWriteError, _write_atomically, config_lock
from jdxmail.settings.files import ConfigFileError, read_source
from jdxmail.settings.save import ConfigRejectedError, SaveResult, save_text, validate_text

__all__ = ["Restored", "backup_name", "export_config", "restore_config"]


@dataclass(frozen=True)
class Restored:
    """A restore done: where the previous file was kept, and what the save reports."""

    backup: Path | None  # None when there was no file before
    result: SaveResult


def export_config(path: Path) -> bytes:
    """The config file at *path* as it is; raise ConfigFileError when it cannot be read."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigFileError(
            path, "no such file", "serve is running on the built-in defaults; there is no file"
        ) from None
    except OSError as exc:
        raise ConfigFileError(path, exc.strerror or str(exc)) from None


def backup_name(path: Path, now: float | None = None) -> Path:
    """``<path>.bak-YYYYmmdd-HHMMSS`` (UTC), with ``-N`` added if that name is taken."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(time.time() if now is None else now))
    candidate = path.with_name(f"{path.name}.bak-{stamp}")
    number = 1
    while candidate.exists():
        number += 1
        candidate = path.with_name(f"{path.name}.bak-{stamp}-{number}")
    return candidate


def restore_config(path: Path, text: str) -> Restored:
    """Replace the config file *path* by *text* after validating it, keeping a backup.

    Write-only markers in *text* keep the stored secrets (as a save does). Raises
    ConfigRejectedError (findings; nothing written), ConfigWriteError (row F1: the
    backup or the file cannot be written; the file is left as it was).
    """
    with config_lock(path):
        current = read_source(path) if path.exists() else None
        restored_text, problems = secrets.restore(path, text, current)
        checked = validate_text(path, restored_text)
        if problems or not checked.ok:
            raise ConfigRejectedError(path, problems + checked.findings)
        backup: Path | None = None
        if current is not None:
            backup = backup_name(path)
            bom = "\ufeff" if export_config(path).startswith(b"\xef\xbb\xbf") else ""
            # mode 0600: the copy holds the same secrets as the file
            _write_atomically(backup, bom + current.text)
        try:
            result = save_text(path, restored_text)
        except ConfigWriteError:
            if backup is not None:
                with contextlib.suppress(OSError):
                    backup.unlink()
            raise
        return Restored(backup, result)
