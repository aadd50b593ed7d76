"""A queue file's bytes stay what they were: the envelope line made by the C encoder
kept once must equal json's own encoding of it, and a write that the kernel takes in
part must still leave the whole file on disk."""

from __future__ import annotations

import json
import os
import zlib
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from jdxmail.queue import queuefile
from jdxmail.queue.durable import _write_rest, write_synced
from jdxmail.queue.queuefile import (
    MAGIC,
    AcceptedMessage,
    CorruptSpoolFile,
    encode_queued_head,
    read_queued_fd,
)

texts = st.text(st.characters(codec="utf-8"), max_size=30)
addresses = st.lists(texts, max_size=3)


@settings(max_examples=400, deadline=None)
@given(
    texts,
    addresses,
    addresses,
    st.one_of(st.none(), texts),
    st.floats(min_value=0, max_value=4e9),
    st.lists(texts, max_size=2),
)
@example("", [], [], None, 0.0, [])
@example('a"\\\x00\n\u2028é', ["x@y"], ["bob@localhost"], "ü", 1733000000.123456, ["SMTPUTF8"])
def test_envelope_line_is_json_encoding(
    mail_from: str,
    relay: list[str],
    local: list[str],
    auth_user: str | None,
    received_at: float,
    options: list[str],
) -> None:
    """The envelope line of every message is exactly json's ASCII, compact encoding."""
    message = AcceptedMessage(
        mail_from=mail_from,
        relay_recipients=tuple(relay),
        local_recipients=tuple(local),
        data=b"Subject: x\r\n\r\nbody\r\n",
        message_id=mail_from + "@id",
        auth_user=auth_user,
        client_address="127.0.0.1",
        session_id="s1",
        received_at=received_at,
        mail_options=tuple(options),
    )
    head = encode_queued_head("0123456789abc12345", message)
    assert head.startswith(MAGIC)
    assert head.endswith(b"\n")
    line = head[len(MAGIC) : -1].decode("ascii")
    expected = {
        "id": "0123456789abc12345",
        "mail_from": mail_from,
        "recipients": relay,
        "local_recipients": local,
        "message_id": mail_from + "@id",
        "auth_user": auth_user,
        "client": "127.0.0.1",
        "session": "s1",
        "received_at": received_at,
        "mail_options": options,
        "size": message.size,
        "crc32": message.crc32(),
    }
    assert line == json.dumps(expected, ensure_ascii=True, separators=(",", ":"))


def test_queue_file_written_and_read_back(tmp_path: Path) -> None:
    """A queue file written over a longer spare reads back as the message, nothing more."""
    message = _queued(bytearray(b"Subject: hi\r\n\r\n" + b"x" * 1000 + b"\r\n"))
    path = tmp_path / "spare"
    path.write_bytes(b"y" * 8000)  # a delivered message's longer file, written over
    head = encode_queued_head("0123456789abc12345", message)
    write_synced(path, (head, message.data), reuse=True)
    assert path.stat().st_size == len(head) + len(message.data)
    fd = os.open(path, os.O_RDONLY)
    try:
        queued = read_queued_fd(fd, "0123456789abc12345")
    finally:
        os.close(fd)
    assert queued.data == message.data
    assert queued.mail_from == "a@example.com"


def test_dot_lines_flag_kept_and_old_files_read_as_unknown(tmp_path: Path) -> None:
    """A message the server saw without dot lines reads back so; a file without the key
    (an older jdxmail's) reads back as not known, its data searched as before."""
    data = b"Subject: hi\r\n\r\nno dots at line starts.\r\n"
    flagged = replace(_queued(data), dot_lines=False)
    for name, message in (("new", flagged), ("old", _queued(data))):
        head = encode_queued_head("0123456789abc12345", message)
        (tmp_path / name).write_bytes(head + data)
    assert b'"dot_lines":false' in (tmp_path / "new").read_bytes()
    assert b"dot_lines" not in (tmp_path / "old").read_bytes()
    read = {}
    for name in ("new", "old"):
        fd = os.open(tmp_path / name, os.O_RDONLY)
        try:
            read[name] = read_queued_fd(fd, "0123456789abc12345")
        finally:
            os.close(fd)
    assert read["new"].dot_lines is False
    assert read["old"].dot_lines is True
    assert read["new"].data == read["old"].data == data


@pytest.mark.parametrize("longer_by", [-100_000, -1, 0, 1, 7000])
def test_spare_of_any_size_holds_exactly_the_new_file(tmp_path: Path, longer_by: int) -> None:
    """A spare shorter, as long as or longer than the new queue file (by *longer_by*
    bytes; empty at the first) ends up holding exactly it: no byte of the delivered
    message it held is left after the new one."""
    message = _queued(b"Subject: hi\r\n\r\n" + b"x" * 1000 + b"\r\n")
    head = encode_queued_head("0123456789abc12345", message)
    path = tmp_path / "spare"
    whole = len(head) + len(message.data)
    path.write_bytes(b"y" * max(0, whole + longer_by))
    write_synced(path, (head, message.data), reuse=True)
    assert path.read_bytes() == head + message.data


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=50), min_size=1, max_size=4), st.data())
def test_rest_of_a_partial_write_completes_the_file(
    tmp_path_factory: pytest.TempPathFactory, pieces: list[bytes], data: st.DataObject
) -> None:
    """Whatever part a first writev took, the file ends up holding every piece once."""
    whole = b"".join(pieces)
    written = data.draw(st.integers(min_value=0, max_value=len(whole)))
    folder = tmp_path_factory.mktemp("rest")
    path = folder / "f"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, whole[:written])  # what the first writev took
        _write_rest(fd, [piece for piece in pieces if piece], written)
    finally:
        os.close(fd)
    assert path.read_bytes() == whole


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=3000), max_size=4), st.integers(0, 2**32 - 1))
def test_spool_checksum_is_zlibs_crc32(pieces: list[bytes], start: int) -> None:
    """The spool's CRC-32 (zlib-ng's when installed) gives zlib's values, piece by piece
    too: queue files written before or by either read back the same."""
    ours, zlibs = start, start
    for piece in pieces:
        ours, zlibs = queuefile.crc32(piece, ours), zlib.crc32(piece, zlibs)
    assert ours == zlibs


def test_queue_file_checked_with_zlibs_checksum_reads_back(tmp_path: Path) -> None:
    """A 100 KB queue file whose envelope carries zlib's CRC-32 (as every jdxmail so
    far wrote it) is read back whole, and one with a byte changed is refused."""
    data = bytes(range(256)) * 400
    message = _queued(data)
    good = tmp_path / "good.msg"
    good.write_bytes(encode_queued_head("Q1", message) + data)
    head = encode_queued_head("Q1", message)
    assert f'"crc32":{zlib.crc32(data)}'.encode() in head
    with good.open("rb") as file:
        assert read_queued_fd(file.fileno(), "Q1").data == data
    bad = tmp_path / "bad.msg"
    bad.write_bytes(head + data[:-1] + b"\x00")
    with bad.open("rb") as file, pytest.raises(CorruptSpoolFile):
        read_queued_fd(file.fileno(), "Q1")


@pytest.mark.parametrize("recipients", [1, 300, 4000])
@pytest.mark.parametrize("size", [0, 3000, 65_000, 65_536, 100_000])
@pytest.mark.parametrize("tail", [b"", b"x", None])
def test_read_sized_by_the_claim_reads_the_same(
    tmp_path: Path, recipients: int, size: int, tail: bytes | None
) -> None:
    """A queue file read with its size known (the claim's fstat) gives the same message
    as one read without, whatever the envelope's length (4 KiB, 64 KiB and more), and a
    file one byte too long or too short is refused either way."""
    data = bytes(range(256)) * (size // 256) + b"\r\n" * ((size % 256) // 2) + b"." * (size % 2)
    message = _queued(data, tuple(f"r{n}@example.net" for n in range(recipients)))
    content = encode_queued_head("Q1", message) + data
    content = content[:-1] if tail is None else content + tail
    path = tmp_path / "Q1.msg"
    path.write_bytes(content)
    with path.open("rb") as file:
        if tail != b"":
            with pytest.raises(CorruptSpoolFile):
                read_queued_fd(file.fileno(), "Q1", file_size=len(content))
            with pytest.raises(CorruptSpoolFile):
                read_queued_fd(file.fileno(), "Q1")
            return
        sized = read_queued_fd(file.fileno(), "Q1", file_size=len(content))
        assert sized == read_queued_fd(file.fileno(), "Q1")
    assert sized.data == data
    assert len(sized.recipients) == recipients


def _queued(
    data: bytes | bytearray, relay_recipients: tuple[str, ...] = ("b@example.net",)
) -> AcceptedMessage:
    """A message as serve would queue it, with *data*."""
    return AcceptedMessage(
        mail_from="a@example.com",
        relay_recipients=relay_recipients,
        local_recipients=(),
        data=data,
        message_id="m@example.com",
        auth_user=None,
        client_address="127.0.0.1",
        session_id="s1",
        received_at=1733000000.5,
    )
