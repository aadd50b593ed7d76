"""docs/serve.md lists every reply the server can send."""

from __future__ import annotations

from pathlib import Path

import pytest

from jdxmail.replies import ALL_REPLIES

DOC = Path(__file__).resolve().parents[2] / "docs" / "serve.md"


@pytest.mark.parametrize("name", sorted(ALL_REPLIES))
def test_every_reply_is_documented(name: str) -> None:
    """Each reply of replies.py appears word for word in docs/serve.md."""
    assert f"`{ALL_REPLIES[name]}`" in DOC.read_text(encoding="utf-8")
