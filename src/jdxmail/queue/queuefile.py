"""The queue-file format: what the spool stores and how ``queue/ID.msg`` is read back.

A queue file is a magic line, one JSON envelope line (with the data's size and
CRC-32) and the data. The size and checksum let a reader tell a file a crash cut
short, or a recycled file whose new content never reached the disk, from a good one.
"""

from __future__ import annotations

import errno
import json
import json.encoder
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "MAGIC",
    "QUEUE_SUFFIX",
    "AcceptedMessage",
    "CorruptSpoolFile",
    "DataTail",
    "QueuedMessage",
    "SpoolError",
    "SpoolFull",
    "SpooledBody",
    "as_spool_error",
    "crc32",
    "crc32_combine",
    "encode_queued_head",
    "read_queued_fd",
    "read_queued_message",
]

try:  # the `fast` extra: zlib-ng's CRC-32 (SIMD), the same values ~15x faster at 100 KB
    from zlib_ng.zlib_ng import crc32
except ImportError:  # pragma: no cover (installed with the dev extra)
    from zlib import crc32

MAGIC = b"JDXSPOOL 1\n"
QUEUE_SUFFIX = ".msg"


class SpoolError(Exception):
    """Storing failed (an I/O error, permission...); the server answers 451 4.3.0."""


class SpoolFull(SpoolError):
    """Storing failed for want of space (disk full, quota); the server answers 452 4.3.1."""


class CorruptSpoolFile(SpoolError):
    """A spool file is truncated, has a bad checksum or an unreadable envelope."""


def as_spool_error(exc: BaseException) -> SpoolError:
    """*exc* as the SpoolError (SpoolFull for want of space) the server answers with."""
    if isinstance(exc, SpoolError):
        return exc
    if isinstance(exc, OSError):
        reason = {
            errno.ENOSPC: "the disk is full",
            errno.EDQUOT: "the disk quota is exceeded",
            errno.EACCES: "permission denied",
            errno.EROFS: "the file system is read-only",
        }.get(exc.errno or 0, exc.strerror or str(exc))
        where = f" ({exc.filename})" if exc.filename else ""
        kind = SpoolFull if exc.errno in (errno.ENOSPC, errno.EDQUOT) else SpoolError
        error = kind(f"cannot store the message: {reason}{where}")
        error.__cause__ = exc
        return error
    error = SpoolError(f"cannot store the message: {exc!r}")
    error.__cause__ = exc
    return error


@dataclass(slots=True, eq=False)
class DataTail:
    """The data of a big message past its first part, in an unnamed file in ``tmp/``.

    The server writes a message too big to hold in memory here as it arrives
    (:meth:`Spool.new_tail`); the spool copies it into each file it stores and closes
    it when the store is done. The file has no name: nothing is left behind if the
    process dies.
    """

    fd: int
    size: int = 0
    crc32: int = 0

    def write(self, data: bytes | bytearray) -> None:
        """Append *data*; OSError (disk full...) if it cannot be written."""
        view = memoryview(data)
        while view:
            written = os.write(self.fd, view)
            view = view[written:]
        self.crc32 = crc32(data, self.crc32)
        self.size += len(data)

    def close(self) -> None:
        """Close (and so free) the file; safe to call twice."""
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


@dataclass(frozen=True, slots=True)
class AcceptedMessage:
    """A message the server has accepted, with its envelope, ready to be stored."""

    mail_from: str
    relay_recipients: tuple[str, ...]
    local_recipients: tuple[str, ...]
    #: the message as it is stored (the server's buffer itself for big messages:
    #: nobody changes it after it is handed over)
    data: bytes | bytearray
    message_id: str
    auth_user: str | None
    client_address: str
    session_id: str
    received_at: float
    mail_options: tuple[str, ...] = ()
    #: False: the server saw that no line of *data* starts with a dot (the delivery
    #: process then does not search it again); True: not known
    dot_lines: bool = True
    #: the rest of the data, after *data*, for a message too big to hold in memory
    #: (storing it hands the tail over to the spool, which closes it)
    tail: DataTail | None = None

    @property
    def size(self) -> int:
        """The size of the whole data in bytes."""
        return len(self.data) + (self.tail.size if self.tail is not None else 0)

    def crc32(self) -> int:
        """The CRC-32 of the whole data."""
        crc = crc32(self.data)
        if self.tail is None:
            return crc
        return crc32_combine(crc, self.tail.crc32, self.tail.size)


def _gf2_times(matrix: list[int], vector: int) -> int:
    total = 0
    row = 0
    while vector:
        if vector & 1:
            total ^= matrix[row]
        vector >>= 1
        row += 1
    return total


def _gf2_square(matrix: list[int]) -> list[int]:
    return [_gf2_times(matrix, matrix[n]) for n in range(32)]


def crc32_combine(crc1: int, crc2: int, length2: int) -> int:
    """The CRC-32 of A + B from crc32(A), crc32(B) and len(B) (zlib's crc32_combine).

    A big message's tail is checksummed as it arrives, before the headers put in
    front of it are known; this joins the two without reading the data again.
    """
    if length2 <= 0:
        return crc1
    odd = [0xEDB88320] + [1 << n for n in range(31)]  # the operator for one zero bit
    even = _gf2_square(odd)  # two zero bits
    odd = _gf2_square(even)  # four zero bits
    while True:  # apply len2 zero bytes to crc1, squaring the operator per bit of len2
        even = _gf2_square(odd)
        if length2 & 1:
            crc1 = _gf2_times(even, crc1)
        length2 >>= 1
        if not length2:
            break
        odd = _gf2_square(even)
        if length2 & 1:
            crc1 = _gf2_times(odd, crc1)
        length2 >>= 1
        if not length2:
            break
    return crc1 ^ crc2


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    """A message read back from ``queue/ID.msg``: its envelope and data.

    For a big message read with ``read_queued_fd(..., keep_over=N)``, *data* holds
    only its first bytes (the header section, for bounces) and *spooled* says where
    the whole data is, to be read in pieces while it is sent.
    """

    queue_id: str
    mail_from: str
    recipients: tuple[str, ...]
    data: bytes
    message_id: str
    auth_user: str | None
    client_address: str
    session_id: str
    received_at: float
    mail_options: tuple[str, ...]
    spooled: SpooledBody | None = None
    #: as AcceptedMessage.dot_lines (True in files written without the key)
    dot_lines: bool = True

    @property
    def size(self) -> int:
        """The size of the whole data in bytes."""
        return self.spooled.size if self.spooled is not None else len(self.data)


@dataclass(frozen=True, slots=True)
class SpooledBody:
    """The data of a big queued message, left in its (claimed, open) queue file."""

    fd: int
    offset: int
    size: int

    def pieces(self, piece: int = 1 << 20) -> Iterator[bytes]:
        """The data in pieces of *piece* bytes; CorruptSpoolFile if the file got short."""
        done = 0
        while done < self.size:
            chunk = os.pread(self.fd, min(piece, self.size - done), self.offset + done)
            if not chunk:
                raise CorruptSpoolFile(f"the queue file ended {self.size - done} bytes early")
            done += len(chunk)
            yield chunk

    def read(self) -> bytes:
        """The whole data at once (for the rare paths that must change it)."""
        return b"".join(self.pieces())


#: one encoder and decoder for every envelope line (json.dumps/loads set one up per call)
_ENVELOPE_ENCODER = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"))
_ENVELOPE_DECODER = json.JSONDecoder()
#: the C encoder under _ENVELOPE_ENCODER, made once: JSONEncoder.encode builds one per
#: call (~1.2 µs of the ~3.4 an envelope took). No cycle check: an envelope is flat.
_c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
_ENVELOPE_CHUNKS: Callable[[dict[str, Any], int], Sequence[str]] | None = (
    None
    if _c_make_encoder is None
    else _c_make_encoder(
        None,
        _ENVELOPE_ENCODER.default,
        json.encoder.encode_basestring_ascii,
        None,
        ":",
        ",",
        False,
        False,
        True,
    )
)


def _encode_envelope(header: dict[str, Any]) -> str:
    if _ENVELOPE_CHUNKS is None:
        return _ENVELOPE_ENCODER.encode(header)
    return "".join(_ENVELOPE_CHUNKS(header, 0))


def encode_queued_head(queue_id: str, message: AcceptedMessage) -> bytes:
    """The start of ``queue/ID.msg``: magic line and one JSON envelope line."""
    header = {
        "id": queue_id,
        "mail_from": message.mail_from,
        "recipients": list(message.relay_recipients),
        "local_recipients": list(message.local_recipients),
        "message_id": message.message_id,
        "auth_user": message.auth_user,
        "client": message.client_address,
        "session": message.session_id,
        "received_at": message.received_at,
        "mail_options": list(message.mail_options),
        "size": message.size,
        "crc32": message.crc32(),
    }
    if not message.dot_lines:  # (an optional key: older files lack it, older readers skip it)
        header["dot_lines"] = False
    line = _encode_envelope(header).encode("ascii")
    return b"".join((MAGIC, line, b"\n"))


def _parse_header(raw: bytes, queue_id: str) -> tuple[dict[str, Any], int]:
    """The envelope of a queue file from its first bytes, and where the data starts."""
    if not raw.startswith(MAGIC):
        raise CorruptSpoolFile(f"{queue_id}: not a jdxmail spool file (bad first line)")
    end = raw.find(b"\n", len(MAGIC))
    if end < 0:
        raise CorruptSpoolFile(f"{queue_id}: truncated envelope")
    try:
        text = raw[len(MAGIC) : end].decode("utf-8")
        header, used = _ENVELOPE_DECODER.raw_decode(text)
        if used != len(text):
            raise ValueError(f"extra data after the envelope at {used}")
    except ValueError as exc:
        raise CorruptSpoolFile(f"{queue_id}: unreadable envelope ({exc})") from None
    if not isinstance(header, dict):
        raise CorruptSpoolFile(f"{queue_id}: unreadable envelope (not an object)")
    return header, end + 1


def _queued(
    header: dict[str, Any], data: bytes, queue_id: str, spooled: SpooledBody | None = None
) -> QueuedMessage:
    """The message of *header* with *data*, checked here unless *spooled* (checked)."""
    if header.get("id") != queue_id:
        # A spare file taken for a new message whose new content never reached the
        # disk (a power cut before the flush) still holds the old, delivered one.
        raise CorruptSpoolFile(
            f"{queue_id}: the envelope is that of another message ({header.get('id')!r})"
        )
    try:
        if spooled is None and (len(data) != header["size"] or crc32(data) != header["crc32"]):
            raise CorruptSpoolFile(
                f"{queue_id}: data is {len(data)} bytes or has a bad checksum "
                f"(envelope says {header['size']} bytes)"
            )
        return QueuedMessage(
            queue_id=queue_id,
            mail_from=str(header["mail_from"]),
            recipients=tuple(map(str, header["recipients"])),
            data=data,
            message_id=str(header["message_id"]),
            auth_user=None if header["auth_user"] is None else str(header["auth_user"]),
            client_address=str(header["client"]),
            session_id=str(header["session"]),
            received_at=float(header["received_at"]),
            mail_options=tuple(map(str, header["mail_options"])),
            spooled=spooled,
            dot_lines=header.get("dot_lines") is not False,
        )
    except CorruptSpoolFile:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptSpoolFile(f"{queue_id}: unreadable envelope ({exc})") from None


def read_queued_message(path: Path) -> QueuedMessage:
    """Read and check ``queue/ID.msg``; raise CorruptSpoolFile or OSError."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return read_queued_fd(fd, path.name.removesuffix(QUEUE_SUFFIX))
    finally:
        os.close(fd)


#: how much of a queue file is read first to find its envelope line
_HEAD_READ = 1 << 16
#: how much is read first of a file known to be bigger than _HEAD_READ: its
#: envelope line (usually under a KiB), the data then read on its own
_ENVELOPE_READ = 1 << 12


def read_queued_fd(
    fd: int, queue_id: str, *, keep_over: int | None = None, file_size: int | None = None
) -> QueuedMessage:
    """Read and check the queue file open on *fd*, holding its data in memory once.

    Data over *keep_over* bytes stays in the file: it is checked (size, checksum)
    in pieces here and the message's ``spooled`` says where it is; ``data`` then
    holds its first 64 KiB. *file_size*, when the caller knows it (the claim's
    ``fstat``), only sizes the reads. Raises CorruptSpoolFile or OSError.
    """
    # A small file is read whole at once and its data sliced out; of a big one only
    # the envelope line first (not 64 KiB read twice), then the data into its own bytes.
    first = _HEAD_READ if file_size is None or file_size <= _HEAD_READ else _ENVELOPE_READ
    head = os.pread(fd, first, 0)
    while len(head) % first == 0 and head and head.find(b"\n", len(MAGIC)) < 0:
        more = os.pread(fd, first, len(head))  # an envelope longer than *first*
        if not more:
            break
        head += more
    header, start = _parse_header(head, queue_id)
    size = header.get("size")
    if not isinstance(size, int) or size < 0:
        raise CorruptSpoolFile(f"{queue_id}: unreadable envelope (no size)")
    if keep_over is not None and size > keep_over:
        return _kept_in_file(header, fd, start, size, queue_id)
    whole = len(head) % first != 0 or len(head) - start > size  # all read already
    # Else one byte more than announced, to notice a file that is too long.
    data = head[start:] if whole else os.pread(fd, size + 1, start)
    return _queued(header, data, queue_id)


def _kept_in_file(
    header: dict[str, Any], fd: int, start: int, size: int, queue_id: str
) -> QueuedMessage:
    body = SpooledBody(fd, start, size)
    crc = 0
    try:
        for piece in body.pieces():
            crc = crc32(piece, crc)
    except CorruptSpoolFile as exc:
        raise CorruptSpoolFile(f"{queue_id}: {exc}") from None
    if os.pread(fd, 1, start + size) or crc != header.get("crc32"):
        raise CorruptSpoolFile(
            f"{queue_id}: data has a bad checksum or is longer than the {size} bytes announced"
        )
    return _queued(header, os.pread(fd, min(size, _HEAD_READ), start), queue_id, body)
