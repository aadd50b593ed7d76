"""JSON with comments: parsing like .NET's config reader, errors with positions, edits
that keep every byte outside the edited value."""

from __future__ import annotations

import pytest

from jdxmail.settings import jsonc

COMMENTED = """\
// leading comment
{
  /* block
     comment */
  "SmtpServer": {
    "Port": 2525, // trailing comment
    "Users": [
      { "UserName": "a", "Password": "x" },
    ],
  },
}
"""


def test_comments_and_trailing_commas_are_accepted() -> None:
    """// and /* */ comments and trailing commas parse to the plain values."""
    data = jsonc.to_python(jsonc.parse(COMMENTED))
    assert data == {"SmtpServer": {"Port": 2525, "Users": [{"UserName": "a", "Password": "x"}]}}


def test_byte_order_mark_and_scalars() -> None:
    """A UTF-8 BOM, numbers, literals and escapes are read as JSON defines them."""
    text = '\ufeff{"a": -1.5e2, "b": [true, false, null], "c": "\\u00e9\\n"}'
    assert jsonc.to_python(jsonc.parse(text)) == {"a": -150.0, "b": [True, False, None], "c": "é\n"}


@pytest.mark.parametrize(
    ("text", "line", "column", "reason"),
    [
        ('{\n  "a": 1\n  "b": 2\n}', 3, 3, "expected ',' or '}'"),
        ('{\n  "a": "unterminated\n}', 2, 21, "line break inside a string"),
        ("{\n  'a': 1\n}", 2, 3, "expected a quoted key"),
        ('{"a": [1, 2}', 1, 12, "expected ',' or ']'"),
        ('{"a": 1} extra', 1, 10, "unexpected text after the end"),
        ('{"a": 1 /* open', 1, 9, "unterminated /* comment"),
        ("", 1, 1, "unexpected end of file"),
        ('{"a": tru}', 1, 7, "unexpected character"),
        ('{"a": "\\x"}', 1, 8, "bad string"),
    ],
)
def test_errors_carry_line_and_column(text: str, line: int, column: int, reason: str) -> None:
    """Each syntax error names its line and column and what was expected."""
    with pytest.raises(jsonc.JsoncError) as caught:
        jsonc.parse(text)
    assert (caught.value.line, caught.value.column) == (line, column)
    assert reason in caught.value.reason


def test_deep_nesting_is_an_error_not_a_crash() -> None:
    """A maliciously deep document is refused with a message, not a RecursionError."""
    with pytest.raises(jsonc.JsoncError, match="nested more than"):
        jsonc.parse("[" * 5000 + "]" * 5000)


def test_find_is_case_insensitive_and_gives_offsets() -> None:
    """Keys are found whatever their case, with the offset of the key for line numbers."""
    root = jsonc.parse(COMMENTED)
    node, offset = jsonc.find(root, ("smtpserver", "PORT"))
    assert node is not None
    assert node.scalar == 2525
    assert offset is not None
    assert jsonc.line_col(COMMENTED, offset) == (6, 5)
    missing, nearest = jsonc.find(root, ("SmtpServer", "Nope"))
    assert missing is None
    assert nearest is not None
    assert jsonc.line_col(COMMENTED, nearest)[0] == 5


def test_set_member_replaces_only_the_value() -> None:
    """Changing a value keeps the comments, key spelling and layout around it."""
    edited = jsonc.set_member(COMMENTED, ("SmtpServer",), "port", 2526)
    assert edited == COMMENTED.replace('"Port": 2525,', '"Port": 2526,')


def test_set_member_adds_a_key_with_the_siblings_indent() -> None:
    """A new key goes after the last one, indented like it; the rest stays as it was."""
    text = '{\n    "A": 1 // one\n}\n'
    assert (
        jsonc.set_member(text, (), "B", [1])
        == '{\n    "A": 1, // one\n    "B": [\n        1\n    ]\n}\n'
    )


def test_append_and_remove_items() -> None:
    """Appending and removing array items keeps comments outside the edited item."""
    added = jsonc.append_item(COMMENTED, ("SmtpServer", "Users"), {"UserName": "b"})
    assert "// trailing comment" in added
    assert "/* block" in added
    users = jsonc.to_python(jsonc.parse(added))["SmtpServer"]["Users"]
    assert [u["UserName"] for u in users] == ["a", "b"]
    removed = jsonc.remove_item(added, ("SmtpServer", "Users"), 0)
    assert [
        u["UserName"] for u in jsonc.to_python(jsonc.parse(removed))["SmtpServer"]["Users"]
    ] == ["b"]
    emptied = jsonc.remove_item(removed, ("SmtpServer", "Users"), 0)
    assert jsonc.to_python(jsonc.parse(emptied))["SmtpServer"]["Users"] == []
    refilled = jsonc.append_item(emptied, ("SmtpServer", "Users"), "c")
    assert jsonc.to_python(jsonc.parse(refilled))["SmtpServer"]["Users"] == ["c"]


def test_append_to_an_empty_array_indents_one_level_deeper() -> None:
    """An item added to [] is placed on its own line, one indent below its key."""
    text = '{\n  "Users": []\n}\n'
    assert jsonc.append_item(text, ("Users",), "x") == '{\n  "Users": [\n    "x"\n  ]\n}\n'
