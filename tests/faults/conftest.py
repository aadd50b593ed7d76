"""A small file system of the test's own (tmpfs with ``size=``) to fill up, and the
real servers and upstreams the fault tests use."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.queue.conftest import run_engine, upstream_factory, upstream_pipelining
from tests.server.conftest import start_server

__all__ = ["SmallFs", "run_engine", "small_fs", "start_server", "upstream_factory"]
__all__ += ["upstream_pipelining"]

#: the size of the file system a test fills (tmpfs rounds to pages)
SIZE = 2 * 1024 * 1024


@dataclass
class SmallFs:
    """A mounted tmpfs: fill it to the last byte, free it, make it read-only."""

    path: Path

    @property
    def filler(self) -> Path:
        """The file that takes the space."""
        return self.path / "filler"

    def fill(self) -> None:
        """Write the filler until the file system has no byte left."""
        with open(self.filler, "ab", buffering=0) as handle:
            for chunk in (65536, 4096, 512, 1):
                block = b"x" * chunk
                with contextlib.suppress(OSError):
                    while True:
                        handle.write(block)
        assert os.statvfs(self.path).f_bavail == 0

    def free(self) -> None:
        """Give all the filler's space back."""
        self.filler.unlink()

    def read_only(self, on: bool) -> None:
        """Remount read-only (every write then fails with EROFS) or writable again.

        Remounting read-only is refused ("busy") while a file is open for writing: a
        server just started may still be making its empty files ahead, for a moment.
        """
        mode = "ro" if on else "rw"
        command = ["mount", "-o", f"remount,{mode}", str(self.path)]
        deadline = time.monotonic() + 10
        while True:
            done = subprocess.run(command, check=False, capture_output=True, text=True)
            if done.returncode == 0:
                return
            if "busy" not in done.stderr or time.monotonic() > deadline:
                raise AssertionError(f"{' '.join(command)}: {done.stderr.strip()}")
            time.sleep(0.01)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[SmallFs]:
    """A 2 MiB tmpfs mounted under *tmp_path* for this test (skipped where mounting is
    not permitted: it needs root or CAP_SYS_ADMIN, as in CI)."""
    path = tmp_path / f"small-{uuid.uuid4().hex[:6]}"
    path.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={SIZE},mode=0755", "tmpfs", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError as exc:
        pytest.skip(f"cannot run mount: {exc}")
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {done.stderr.strip()}")
    try:
        yield SmallFs(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
        with contextlib.suppress(OSError):
            path.rmdir()
