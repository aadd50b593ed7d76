"""Mailbox folder and file names stay what they were for every address and Message-ID:
the plain-name shortcut must give exactly the character-by-character result, or mail
would land in a second folder beside the old one."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from jdxmail.queue.mailbox import safe_name

_ALLOWED = frozenset("._+-=@")


def made_safe_one_by_one(text: str, max_bytes: int) -> str:
    """safe_name as it was written first: every character looked at."""
    name = "".join(c if (c.isalnum() or c in _ALLOWED) else "_" for c in text)
    if name.startswith("."):
        name = "_" + name[1:]
    encoded = name.encode("utf-8")
    if len(encoded) > max_bytes:
        name = encoded[:max_bytes].decode("utf-8", errors="ignore")
    return name


names = st.text(st.sampled_from("abzAZ09._+-=@_ /\\:<>é\u00a0\x00\n"), max_size=40)


@settings(max_examples=800, deadline=None)
@given(names, st.sampled_from([5, 20, 191, 200]))
@example("bob@localhost", 200)
@example(".hidden", 200)
@example("", 200)
@example("x" * 201, 200)
@example("20261205.1234@bench.example.com", 191)
def test_names_are_made_safe_as_before(text: str, max_bytes: int) -> None:
    """A name is made safe exactly as the character-by-character rule makes it."""
    assert safe_name(text, max_bytes) == made_safe_one_by_one(text, max_bytes)
