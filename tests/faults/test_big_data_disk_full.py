"""A full disk while a big message streams into the spool's tmp/ (the file system is
smaller than the message): 452 4.3.1 after the data, nothing left, space given back."""

from __future__ import annotations

import pytest

from tests.faults.conftest import SmallFs
from tests.faults.test_disk_full import BODY, files_under, paths_on, send
from tests.server.conftest import StartServer, port_of


async def test_big_message_on_a_full_disk_is_452_and_frees_its_space(
    small_fs: SmallFs, start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A 3 MB message on a 2 MiB file system gets 452 4.3.1, leaves no file and no
    space taken; the next (small) message is stored."""
    app = await start_server(paths_on(small_fs))
    port = port_of(app)
    big = b"Subject: big\r\n\r\n" + (b"y" * 78 + b"\r\n") * 40_000
    code, text = await send(port, "bob@mx.test", big)
    assert (code, text.split()[0]) == (452, "4.3.1")
    # (full while the data arrived, or while the stored files were made from it)
    assert "No space left on device" in caplog.text or "the disk is full" in caplog.text
    assert files_under(small_fs.path) == []
    code, _ = await send(port, "bob@mx.test")
    assert code == 250
    (stored,) = files_under(small_fs.path / "mailbox")
    assert stored.read_bytes().endswith(BODY)
