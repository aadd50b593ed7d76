"""The server's data checks agree with plain, obvious reference implementations on
random data over the bytes that matter to them (CR, LF, dot, NUL and a letter)."""

from __future__ import annotations

import re
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from jdxmail import data_encoding, replies
from jdxmail.data_encoding import has_bare_line_ending
from jdxmail.server.smtp import TEXT_LINE_LIMIT, _has_long_line, clean_data

BARE = re.compile(rb"\r(?!\n)|(?<!\r)\n")

#: pieces to join: single bytes, CRLFs and runs of letters (long lines, big data)
PIECES = st.one_of(
    st.sampled_from([b"\r", b"\n", b".", b"\x00", b"x", b"\r\n", b"\r\n."]),
    st.integers(0, TEXT_LINE_LIMIT + 60).map(lambda n: b"x" * n),
    st.integers(TEXT_LINE_LIMIT - 3, TEXT_LINE_LIMIT + 1).map(lambda n: b"x" * n),
)
DATA = st.lists(PIECES, max_size=60).map(b"".join)
#: mostly CRLF lines, so that a bare ending is one among many (rarer, harder to see)
LINES = st.lists(
    st.one_of(st.integers(0, 120).map(lambda n: b"x" * n + b"\r\n"), PIECES), max_size=400
).map(b"".join)


def reference_bare(data: bytes) -> bool:
    """A CR not followed by LF, or an LF not after a CR, found by a regular expression."""
    return BARE.search(data) is not None


def reference_long_line(data: bytes) -> bool:
    """A line of TEXT_LINE_LIMIT bytes or more (before its CRLF), by splitting at CRLF
    (*data* has no bare CR or LF)."""
    return any(len(line) >= TEXT_LINE_LIMIT for line in data.split(b"\r\n"))


def crlf_only(data: bytes) -> bytes:
    """*data* with every line ending made CRLF (as the server checks line lengths)."""
    return re.sub(rb"\r\n|\n|\r", b"\r\n", data)


@given(st.one_of(DATA, LINES), st.booleans())
def test_bare_line_ending_check_agrees_with_a_regular_expression(
    data: bytes, as_bytearray: bool
) -> None:
    """has_bare_line_ending and both of its ways agree with the regular expression."""
    value = bytearray(data) if as_bytearray else data
    expected = reference_bare(data)
    assert has_bare_line_ending(value) is expected
    assert (value.replace(b"\r", b"").replace(b"\n", b"\r\n") != value) is expected
    if data:
        assert data_encoding._has_bare_line_ending_flags(value) is expected


@settings(max_examples=300)
@given(st.one_of(DATA, LINES))
def test_bare_line_ending_check_in_windows_and_samples_agrees(data: bytes) -> None:
    """With tiny windows and samples, the windowed and sampled paths agree too (a CRLF
    or a bare CR at a window's edge included)."""
    with mock.patch.multiple(data_encoding, _WINDOW=7, _SAMPLED_FROM=4, _SAMPLE=5, _SHORT_LINES=1):
        assert has_bare_line_ending(data) is reference_bare(data)
        assert has_bare_line_ending(bytearray(data)) is reference_bare(data)


@given(st.one_of(DATA, LINES))
def test_long_line_check_agrees_with_splitting_lines(data: bytes) -> None:
    """_has_long_line finds a line of TEXT_LINE_LIMIT bytes or more exactly when
    splitting into lines does."""
    data = crlf_only(data)
    assert _has_long_line(data) is reference_long_line(data)
    assert _has_long_line(bytearray(data)) is reference_long_line(data)


@given(st.one_of(DATA, LINES), st.booleans(), st.booleans())
def test_clean_data_refuses_and_cleans_as_the_rules_say(
    data: bytes, normalize: bool, strip_nul: bool
) -> None:
    """clean_data refuses (NUL, bare line end, long line) and un-stuffs as a line by
    line reading of RFC 5321 does."""
    content = data if data.endswith(b"\r\n") or not data else data + b"\r\n"
    body, problem = clean_data(
        bytearray(content),
        normalize=normalize,
        strip_nul=strip_nul,
        dot_lines=content.find(b"\r\n.") >= 0,
    )
    if b"\x00" in content and not strip_nul:
        assert problem == replies.NUL_BYTE
        return
    if reference_bare(content):
        if not normalize:
            assert problem == replies.BARE_LINE_ENDING
            return
        content = crlf_only(content)
    if reference_long_line(content):
        assert problem == replies.DATA_LINE_TOO_LONG
        return
    lines = content.split(b"\r\n")
    expected = b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)
    assert problem is None
    assert bytes(body) == expected.replace(b"\x00", b"")
