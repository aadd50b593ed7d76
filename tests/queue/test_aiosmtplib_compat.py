"""The start-up check that aiosmtplib has every private member the relay uses."""

from __future__ import annotations

import ast
import asyncio
import re
from pathlib import Path

import pytest
from aiosmtplib.protocol import SMTPProtocol

from jdxmail.queue import _aiosmtplib_compat as compat
from jdxmail.queue._aiosmtplib_compat import (
    NEEDED_VERSION,
    PRIVATE_MEMBERS,
    AiosmtplibMismatch,
    check_aiosmtplib,
)


class _WithoutResponsePending(SMTPProtocol):
    """aiosmtplib 5.1.2's protocol: no ``_response_pending`` flag."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(loop=loop)
        del self._response_pending


class _WithoutSetResponseException(SMTPProtocol):
    """A protocol whose ``_set_response_exception`` is gone (as in 5.1.2)."""

    @property
    def _set_response_exception(self) -> None:  # type: ignore[override]
        raise AttributeError("_set_response_exception")


def test_installed_aiosmtplib_passes() -> None:
    """The aiosmtplib jdxmail is installed with has every member the relay uses."""
    check_aiosmtplib()


@pytest.mark.parametrize(
    ("protocol_class", "member"),
    [
        (_WithoutResponsePending, "_response_pending"),
        (_WithoutSetResponseException, "_set_response_exception"),
    ],
)
def test_check_names_the_missing_member_and_the_version(
    protocol_class: type[SMTPProtocol], member: str
) -> None:
    """A protocol lacking a member is refused, naming the member and the aiosmtplib needed."""
    with pytest.raises(AiosmtplibMismatch) as caught:
        check_aiosmtplib(protocol_class)
    assert member in str(caught.value)
    assert f"aiosmtplib>={NEEDED_VERSION}" in str(caught.value)


def _private_members_used(source: str, own: set[str]) -> set[str]:
    """The ``_name`` attributes *source* reads or writes, less the ones it defines itself."""
    used = {
        node.attr
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Attribute)
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
    }
    return used - own


def test_every_private_member_used_is_checked() -> None:
    """Each aiosmtplib private member the compat module touches is in the start-up check."""
    source = Path(compat.__file__).read_text(encoding="utf-8")
    # PipeliningProtocol's own attributes, not aiosmtplib's
    own = {"_more", "_expiry", "_expiry_timer", "_set_expiry", "_expiry_due"}
    assert _private_members_used(source, own) <= set(PRIVATE_MEMBERS)


#: the members whose names only aiosmtplib uses (other classes have a ``_buffer`` or a
#: ``_loop`` of their own)
_DISTINCT_MEMBERS = [m for m in PRIVATE_MEMBERS if m not in ("_buffer", "_loop")]


@pytest.mark.parametrize("member", _DISTINCT_MEMBERS)
def test_no_other_module_touches_the_private_members(member: str) -> None:
    """aiosmtplib's private members are used in the compat module only."""
    package = Path(compat.__file__).parents[1]
    users = [
        path.relative_to(package)
        for path in package.rglob("*.py")
        if path.name != "_aiosmtplib_compat.py"
        and re.search(rf"\.{member}\b", path.read_text(encoding="utf-8"))
    ]
    assert users == []
