"""The start-up check that aiosmtplib has every private member the relay uses."""

from __future__ import annotations

import asyncio

import pytest
from aiosmtplib.protocol import SMTPProtocol

from jdxmail.queue._aiosmtplib_compat import (
    NEEDED_VERSION,
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
