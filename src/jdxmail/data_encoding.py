"""SMTP DATA encoding (RFC 5321 4.5.2): CRLF line endings and dot-stuffing, both ways.

The relay client (queue/relay.py), the server (server/smtp.py) and ``diag relay``
(diagnostics/relay_probe.py) all encode and decode message data here.
"""

from __future__ import annotations

import ctypes
import re
import sys
from collections.abc import Callable, Iterable, Iterator

__all__ = [
    "CHUNK",
    "LINE_ENDINGS",
    "dot_stuffed",
    "find_dot_line",
    "has_bare_line_ending",
    "stuffed_body",
    "stuffed_pieces",
    "to_crlf",
    "unstuffed",
]

#: any line ending: CRLF, a bare LF, a bare CR
LINE_ENDINGS = re.compile(rb"\r\n|\n|\r(?!\n)")


#: translate() tables: 1 where *data* has a CR (LF), 0 elsewhere
_CR_FLAGS = bytes(1 if byte == 13 else 0 for byte in range(256))
_LF_FLAGS = bytes(1 if byte == 10 else 0 for byte in range(256))
#: bigger data is checked this many bytes at a time (the checks make two copies)
_WINDOW = 1 << 18
#: data from this size on has its line length sampled to pick the faster check
_SAMPLED_FROM = 2048
_SAMPLE = 1024
#: more line ends than this in a sample: short lines, where the flags win
_SHORT_LINES = _SAMPLE // 48


def has_bare_line_ending(data: bytes | bytearray) -> bool:
    """True when *data* has a CR or LF that is not part of a CRLF (``\\n\\r`` too)."""
    size = len(data)
    if size <= _WINDOW:
        return _has_bare_line_ending(data)
    # A window at a time (bounded memory); a CRLF is never cut in two, so that a
    # bare CR or LF at a window's edge is bare in the data too.
    start = 0
    while start < size:
        end = min(start + _WINDOW, size)
        if end < size and data[end - 1] == 13 and data[end] == 10:
            end += 1
        if _has_bare_line_ending(data[start:end]):
            return True
        start = end
    return False


def _has_bare_line_ending(data: bytes | bytearray) -> bool:
    size = len(data)
    if size >= _SAMPLED_FROM:
        middle = size // 2
        if data.count(b"\n", middle, middle + _SAMPLE) > _SHORT_LINES:
            return _has_bare_line_ending_flags(data)
    # Without its CRs and with every LF made CRLF, *data* is itself exactly when
    # each CR is followed by an LF and each LF follows a CR. Both replaces hop
    # from one line end to the next with memchr and copy the lines between: per
    # line, not per byte, so faster than the flags for lines longer than ~48
    # bytes (100 KB of base64 lines: ~47 -> ~33 µs), slower for shorter ones.
    return data.replace(b"\r", b"").replace(b"\n", b"\r\n") != data


def _has_bare_line_ending_flags(data: bytes | bytearray) -> bool:
    # Every CR is followed by an LF and every LF follows a CR exactly when the LF
    # flags, one byte on, equal the CR flags, and neither is at an edge. Two
    # table-driven passes and a memcmp in C, per byte (100 KB: ~48 µs).
    if data[0] == 10 or data[-1] == 13:
        return True
    crs = data.translate(_CR_FLAGS)
    lfs = data.translate(_LF_FLAGS)
    return not lfs.startswith(memoryview(crs)[:-1], 1)


def to_crlf(data: bytes | bytearray) -> bytes:
    """*data* with every line ending (CRLF, bare LF, bare CR) made CRLF."""
    return LINE_ENDINGS.sub(b"\r\n", data)


def unstuffed(content: bytes | bytearray) -> bytes | bytearray:
    """*content* (CRLF line endings) with the dot at each line start removed; itself
    when no line starts with a dot (no copy)."""
    if content.startswith(b"."):
        content = content[1:]
    elif find_dot_line(content) < 0:
        return content
    return content.replace(b"\r\n.", b"\r\n")


def dot_stuffed(data: bytes, *, crlf: bool = False, dot_lines: bool = True) -> bytes:
    """The DATA payload for *data*: CRLF line endings, leading dots doubled, ``.`` line.

    With *crlf* the caller vouches that *data* has CRLF line endings only (spooled
    mail: the server normalised or refused bare CR/LF when it took it), so they are
    not counted again and this is a single ``replace``; aiosmtplib's general path
    runs two regular expressions over the whole message. With *dot_lines* False it
    vouches that no line of *data* starts with a dot (the server saw none when it
    took the message), so *data* is not searched for one again.
    """
    return stuffed_body(data, crlf=crlf, dot_lines=dot_lines) + b".\r\n"


def stuffed_body(data: bytes, *, crlf: bool = False, dot_lines: bool = True) -> bytes:
    """*data* dot-stuffed and ending in CRLF; *data* itself when nothing changes
    (*crlf* and *dot_lines* as for :func:`dot_stuffed`)."""
    if not crlf and has_bare_line_ending(data):
        data = to_crlf(data)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return _stuffed(data, line_start=True) if dot_lines else data


#: messages larger than this are written in pieces of this size, each after the
#: socket took the one before, so they are not copied whole into a write buffer
CHUNK = 1 << 20


def stuffed_pieces(pieces: Iterable[bytes]) -> Iterator[bytes]:
    """Dot-stuffed DATA payload (without the final ``.`` line) of data read in pieces.

    Each piece sent ends at a line end, so a dot that begins a line is seen whole
    even when the reads split ``CRLF.``; the last line gets a CRLF if it lacks one.
    """
    carry = b""
    line_start = True
    sent = False
    for piece in pieces:
        text = carry + piece if carry else piece
        cut = text.rfind(b"\r\n") + 2
        if cut < 2 and len(text) <= 4 * CHUNK:
            carry = text  # no line end yet: wait for the rest of the line
            continue
        if cut < 2:
            cut = len(text)  # a run without line ends (not from jdxmail's spool)
        out, carry = text[:cut], text[cut:]
        yield _stuffed(out, line_start)
        line_start, sent = out.endswith(b"\r\n"), True
    if carry or not line_start or not sent:  # (no data at all is one empty line)
        yield _stuffed(carry, line_start) + b"\r\n"


def _stuffed(text: bytes, line_start: bool) -> bytes:
    """*text* with a dot doubled at each line start (*text* itself when it has none)."""
    if find_dot_line(text) >= 0:
        text = text.replace(b"\r\n.", b"\r\n..")
    if line_start and text.startswith(b"."):
        text = b"." + text
    return text


def _load_memmem() -> Callable[[int, int, bytes, int], int | None] | None:
    # Through PyDLL, which keeps the interpreter lock over the call (as ``find`` does):
    # handing it to another thread and waiting to get it back costs more than the
    # search, and it would pause the event loop.
    if sys.platform != "linux":
        return None
    try:
        function = ctypes.PyDLL(None).memmem
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t)
    function.restype = ctypes.c_void_p
    return function


_MEMMEM = _load_memmem()

#: from this many bytes on, glibc's memmem looks for CRLF-dot about three times as
#: fast as ``bytes.find`` (~20 against ~60 µs per 100 KB here); below it the call's
#: own cost eats the difference
_MEMMEM_FROM = 4096
#: dots find_dot_line looks at one by one before it searches for CRLF-dot instead,
#: plus one for every KiB it passed (base64 has no dots; text has one every few words)
_DOT_HOPS = 16
_DOT_LINE = b"\r\n."


def find_dot_line(data: bytes | bytearray, start: int = 0) -> int:
    """``data.find(b"\\r\\n.", start)`` (a line starting with a dot), faster.

    A one-byte search (memchr) from dot to dot is ~20 times faster than the three-byte
    search over data with few dots, as big messages mostly are (base64 attachments);
    once the dots come thicker than the budget, the three-byte search does the rest,
    with glibc's memmem for big ``bytes``.
    """
    position = start + 2
    hops = 0
    while (dot := data.find(b".", position)) >= 0:
        if data.startswith(b"\r\n", dot - 2):
            return dot - 2
        position = dot + 1
        hops += 1
        if hops > _DOT_HOPS + ((dot - start) >> 10):
            return _find_dot_line_from(data, dot - 1)
    return -1


def _find_dot_line_from(data: bytes | bytearray, start: int) -> int:
    if _MEMMEM is not None and type(data) is bytes and len(data) - start >= _MEMMEM_FROM:
        # (a c_char_p made from bytes points into them: no copy)
        base = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value
        assert base is not None
        found = _MEMMEM(base + start, len(data) - start, _DOT_LINE, len(_DOT_LINE))
        return -1 if found is None else found - base
    return data.find(_DOT_LINE, start)
