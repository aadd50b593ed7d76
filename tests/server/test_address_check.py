"""MAIL and RCPT addresses passed once are not checked again: the answer stays the
same, whether the address comes back in the same session, in another, or without
the SMTPUTF8 parameter it passed with."""

from __future__ import annotations

from pathlib import Path

from hypothesis import example, given, settings
from hypothesis import strategies as st

from jdxmail.server import smtp
from tests.server.conftest import Client, StartServer, port_of


def _verdict(check: object, address: str, smtputf8: bool) -> str | None:
    """The reply *check* refuses *address* with, or None when it passes."""
    try:
        check(address, smtputf8)  # type: ignore[operator]
    except smtp._SyntaxProblem as problem:
        return str(problem.reply)
    return None


@settings(max_examples=500, deadline=None)
@given(
    st.text(st.sampled_from('ab.@"\\[]:- \x00é1IPv6'), max_size=24),
    st.booleans(),
)
@example("ü@example.com", True)
@example("a..b@example.com", False)
def test_kept_check_agrees_with_the_full_one(address: str, smtputf8: bool) -> None:
    """For any address, with or without SMTPUTF8, the check through the addresses kept
    gives the full check's verdict, the first time and the next."""
    expected = _verdict(smtp._check_new_address, address, smtputf8)
    assert _verdict(smtp._check_address, address, smtputf8) == expected
    assert _verdict(smtp._check_address, address, smtputf8) == expected
    assert _verdict(smtp._check_address, address, not smtputf8) == _verdict(
        smtp._check_new_address, address, not smtputf8
    )


async def test_non_ascii_address_needs_smtputf8_every_time(
    tmp_path: Path, start_server: StartServer
) -> None:
    """A non-ASCII sender taken with SMTPUTF8 is still refused 553 5.6.7 in the next
    transaction that leaves the parameter out, and a malformed one is refused twice."""
    app = await start_server(TrustedNetworks=["127.0.0.0/8"])
    client = await Client.connect(port_of(app))
    await client.ehlo()
    assert (await client.cmd("MAIL FROM:<ünï@example.com> SMTPUTF8")).startswith("250")
    assert (await client.cmd("RSET")).startswith("250")
    refused = "553 5.6.7 Non-ASCII address needs the SMTPUTF8 parameter"
    assert await client.cmd("MAIL FROM:<ünï@example.com>") == refused
    bad = "553 5.1.3 Malformed address: bad local part"
    assert await client.cmd("MAIL FROM:<a..b@example.com>") == bad
    assert await client.cmd("MAIL FROM:<a..b@example.com>") == bad
    await client.close()
