"""Console sessions, password checks and the login throttle (no HTTP here).

Users are ``WebUI.Users`` (hashes as for SMTP users), read live from the settings so a
reload adds or removes them. Sessions live in memory: a restart logs everyone out.
Failed logins are counted per client address by the same AuthThrottle the SMTP server
uses for AUTH, with SmtpServer.AuthFailureLimit and AuthFailureWindow.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from jdxmail.server.auth import check_password
from jdxmail.server.policy import AuthThrottle

if TYPE_CHECKING:
    from jdxmail.settings.model import UserSettings

__all__ = ["SESSION_COOKIE", "ConsoleAuth", "Session", "basic_credentials"]

logger = logging.getLogger("jdxmail.auth")

#: the cookie that names a logged-in session
SESSION_COOKIE = "jdx_session"
#: seconds a session lasts from its login
SESSION_LIFETIME = 12 * 3600
#: sessions kept at most (the oldest go first)
_MAX_SESSIONS = 1000
#: seconds a checked HTTP Basic password is not checked again: an API client sends it
#: with every request, and an scrypt hash costs tens of milliseconds of CPU each time
_VERIFIED_FOR = 300.0
_MAX_VERIFIED = 256


@dataclass
class Session:
    """A logged-in console user and the CSRF token of that session."""

    user: str
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    expires: float = field(default_factory=lambda: time.monotonic() + SESSION_LIFETIME)


class ConsoleAuth:
    """Who may use the console: sessions, password checks, the login throttle."""

    def __init__(self, limit: int = 5, window: float = 300) -> None:
        self.throttle = AuthThrottle(limit, window)
        self._sessions: dict[str, Session] = {}
        self._verified: dict[bytes, float] = {}

    def session(self, token: str | None) -> Session | None:
        """The live session named by a cookie value, or None."""
        if not token:
            return None
        found = self._sessions.get(token)
        if found is None:
            return None
        if found.expires < time.monotonic():
            del self._sessions[token]
            return None
        return found

    def open_session(self, user: str) -> tuple[str, Session]:
        """A new session for *user*: (cookie value, session)."""
        if len(self._sessions) >= _MAX_SESSIONS:
            del self._sessions[next(iter(self._sessions))]
        token = secrets.token_urlsafe(32)
        session = Session(user)
        self._sessions[token] = session
        return token, session

    def close_session(self, token: str | None) -> None:
        """End the session named by *token* (logout)."""
        if token:
            self._sessions.pop(token, None)

    async def verify(
        self, users: list[UserSettings], client: str, name: str, password: str
    ) -> str | None:
        """Check a login; return the user name, or None (failure counted for *client*).

        Names are compared ignoring case, as for SMTP users. The caller checks
        ``throttle.blocked(client)`` first.
        """
        wanted = name.casefold()
        user = next((u for u in users if u.user_name.casefold() == wanted), None)
        if user is not None:
            key = _cache_key(user, password)
            if self._verified.get(key, 0.0) > time.monotonic():
                return user.user_name
        outcome = await check_password(user, password)
        if outcome.success and user is not None:
            if len(self._verified) >= _MAX_VERIFIED:
                self._verified.clear()
            self._verified[_cache_key(user, password)] = time.monotonic() + _VERIFIED_FOR
            return user.user_name
        count = self.throttle.record_failure(client)
        logger.warning(
            "console login failed for %r from %s (%d in the window)", name, client, count
        )
        return None


def _cache_key(user: UserSettings, password: str) -> bytes:
    """A digest of the user, its stored hash and a password (a changed hash misses)."""
    material = "\0".join((user.user_name, user.password.get_secret_value(), password))
    return hashlib.sha256(material.encode("utf-8", "surrogateescape")).digest()


def basic_credentials(header: str) -> tuple[str, str] | None:
    """(user, password) from an ``Authorization: Basic`` header, else None."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    name, sep, password = decoded.partition(":")
    return (name, password) if sep else None
