"""SASL PLAIN / LOGIN decoding and password checks that never block the event loop."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import logging
from dataclasses import dataclass

from jdxmail.passwords import HashType, InvalidHashError, verify_password
from jdxmail.settings.model import UserSettings

__all__ = [
    "AuthOutcome",
    "SaslError",
    "check_password",
    "decode_response",
    "decode_utf8",
    "parse_plain",
]

logger = logging.getLogger("jdxmail.auth")

# Compared against when the user does not exist, so that an unknown name costs the
# same as a wrong password.
_DUMMY_HASH = "0" * 64


class SaslError(ValueError):
    """A client's AUTH data cannot be decoded (bad base64 or PLAIN layout)."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        #: "base64", "plain", or "utf8" (a user name or password that is not UTF-8)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class AuthOutcome:
    """The result of a password check: the user on success, and what went wrong."""

    user: UserSettings | None
    #: the client sent the stored hash itself instead of the password (row D2)
    sent_stored_hash: bool = False
    #: the user's stored password is unusable (validate-config reports it)
    broken_hash: str | None = None

    @property
    def success(self) -> bool:
        """True when the password matched."""
        return self.user is not None


def decode_response(line: str) -> bytes:
    """Decode one base64 AUTH response; ``=`` is the empty response. Raise SaslError."""
    text = line.strip()
    if text == "=":
        return b""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise SaslError("base64") from None


def parse_plain(blob: bytes) -> tuple[str, str, str]:
    """Split a PLAIN response into (authzid, user, password) (RFC 4616); raise SaslError."""
    parts = blob.split(b"\x00")
    if len(parts) != 3 or not parts[1]:
        raise SaslError("plain")
    authzid, user, password = (decode_utf8(p) for p in parts)
    return authzid, user, password


def decode_utf8(data: bytes) -> str:
    """A SASL name or password as text; SaslError("utf8") when it is not UTF-8.

    RFC 4616 and RFC 4954 carry UTF-8 only, and no stored user name or password can
    match bytes that are not: such a login fails like a wrong password.
    """
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise SaslError("utf8") from None


def _check(user: UserSettings | None, password: str) -> AuthOutcome:
    if user is None:
        verify_password(password, _DUMMY_HASH, HashType.SHA256)
        return AuthOutcome(None)
    stored = user.password.get_secret_value()
    try:
        ok = verify_password(password, stored, user.hash_type)
    except InvalidHashError as exc:
        return AuthOutcome(None, broken_hash=str(exc))
    except UnicodeEncodeError:
        return AuthOutcome(None)
    if ok:
        return AuthOutcome(user)
    sent_hash = user.hash_type is not HashType.PLAIN and hmac.compare_digest(
        password.strip().lower().encode("utf-8", "surrogateescape"),
        stored.strip().lower().encode("utf-8", "surrogateescape"),
    )
    return AuthOutcome(None, sent_stored_hash=sent_hash)


async def check_password(user: UserSettings | None, password: str) -> AuthOutcome:
    """Check *password* for *user* (None: unknown user) in a worker thread.

    scrypt costs tens of milliseconds of CPU, which must not stall other sessions.
    """
    return await asyncio.to_thread(_check, user, password)
