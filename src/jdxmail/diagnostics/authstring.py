"""auth-string: the base64 lines of a manual AUTH PLAIN / AUTH LOGIN session (row D1)."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

__all__ = ["AuthLines", "auth_lines"]


@dataclass(frozen=True, slots=True)
class AuthLines:
    """What to type: one ``AUTH PLAIN …`` line, or ``AUTH LOGIN`` and two base64 lines.

    The lines hold the password, so they are kept out of ``repr``.
    """

    plain: str = field(repr=False)
    login: tuple[str, str, str] = field(repr=False)


def auth_lines(user: str, password: str) -> AuthLines:
    """The AUTH PLAIN line (RFC 4616: NUL user NUL password) and the AUTH LOGIN lines."""

    def b64(text: str) -> str:
        return base64.b64encode(text.encode("utf-8")).decode("ascii")

    return AuthLines(
        plain=f"AUTH PLAIN {b64(chr(0) + user + chr(0) + password)}",
        login=("AUTH LOGIN", b64(user), b64(password)),
    )
