"""The inbox list reads a message's header section and attachment count exactly as
the patterns did that the faster scans replaced (the index does this per new mail)."""

from __future__ import annotations

import re

from hypothesis import example, given, settings
from hypothesis import strategies as st

from jdxmail.inbox.message import header_section, parse_summary

_HEADER_END = re.compile(rb"\r?\n\r?\n")
_ATTACHMENT = re.compile(rb"(?im)^content-disposition:[ \t]*attachment")

pieces = st.sampled_from(
    [b"\r", b"\n", b"\r\n", b"a", b"Subject: x", b": ", b"Content-Disposition: ",
     b"ATTACHMENT", b"attachment", b"AtTaChMeNt", b"\t", b" ", b"\xc3\xa9"]
)  # fmt: skip
messages = st.lists(pieces, max_size=30).map(b"".join)


@settings(max_examples=600, deadline=None)
@given(messages)
@example(b"a\n\n\r\n")
@example(b"a\r\n\r\nb\n\nc")
@example(b"no blank line\r\n")
def test_the_header_section_ends_where_the_pattern_said(raw: bytes) -> None:
    """The header section shown (and searched) is cut at the same first blank line."""
    match = _HEADER_END.search(raw)
    assert header_section(raw) == (raw if match is None else raw[: match.end()])


@settings(max_examples=600, deadline=None)
@given(messages)
@example(b"Subject: x\r\n\r\nContent-Disposition: ATTACHMENT; name=a\r\n")
@example(b"Subject: x\r\n\r\nsee the attachment\r\n")
def test_attachments_are_counted_as_the_pattern_counted(raw: bytes) -> None:
    """The list's attachment count of a message in memory is what the pattern found."""
    summary = parse_summary(raw, raw)
    assert summary.attachments == len(_ATTACHMENT.findall(raw))
