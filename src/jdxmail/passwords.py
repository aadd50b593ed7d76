"""Password hashing and verification for SMTP users.

Three stored forms are supported:

* ``SHA256``: 64 lowercase hex digits, the unsalted SHA-256 of the UTF-8 password
  (what the JumboDogX guide shows: ``echo -n password | sha256sum``).
* ``SHA512``: 128 hex digits, the unsalted SHA-512.
* ``SCRYPT``: a salted, self-describing string ``scrypt:N:r:p$salt$hexdigest``
  (the layout werkzeug uses), recommended for new users.

Verification always compares in constant time.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import re
import secrets

__all__ = [
    "HashType",
    "InvalidHashError",
    "detect_hash_type",
    "hash_matches_type",
    "hash_password",
    "verify_password",
]

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_HEX128 = re.compile(r"[0-9a-fA-F]{128}")
_SCRYPT = re.compile(r"scrypt:(\d+):(\d+):(\d+)\$([A-Za-z0-9+/=_-]+)\$([0-9a-f]+)")

# N=2**15, r=8, p=1: the interactive-login parameters recommended by RFC 7914 §2,
# about 30 ms and 32 MiB on the machines we measured.
SCRYPT_N = 2**15
SCRYPT_R = 8
SCRYPT_P = 1
_SCRYPT_DKLEN = 32
_SCRYPT_MAXMEM = 128 * 1024 * 1024


class HashType(enum.StrEnum):
    """How a user's ``Password`` is stored in the config."""

    SHA256 = "SHA256"
    SHA512 = "SHA512"
    SCRYPT = "SCRYPT"
    PLAIN = "PLAIN"

    @classmethod
    def parse(cls, value: str) -> HashType:
        """Return the hash type named by *value*, ignoring case; raise ValueError."""
        try:
            return cls(value.strip().upper())
        except ValueError:
            names = ", ".join(member.value for member in cls)
            raise ValueError(f"unknown hash type {value!r} (expected one of {names})") from None


class InvalidHashError(ValueError):
    """A stored password value does not have the form its hash type needs."""


def hash_password(password: str, hash_type: HashType = HashType.SHA256) -> str:
    """Return the stored form of *password* for *hash_type*.

    SHA256/SHA512 give lowercase hex of the UTF-8 bytes; SCRYPT uses a fresh random
    salt on every call. PLAIN returns the password unchanged.
    """
    data = password.encode("utf-8")
    if hash_type is HashType.SHA256:
        return hashlib.sha256(data).hexdigest()
    if hash_type is HashType.SHA512:
        return hashlib.sha512(data).hexdigest()
    if hash_type is HashType.SCRYPT:
        salt = base64.urlsafe_b64encode(secrets.token_bytes(16)).decode("ascii").rstrip("=")
        digest = _scrypt(data, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
        return f"scrypt:{SCRYPT_N}:{SCRYPT_R}:{SCRYPT_P}${salt}${digest}"
    return password


def _scrypt(data: bytes, salt: str, n: int, r: int, p: int) -> str:
    return hashlib.scrypt(
        data,
        salt=salt.encode("ascii"),
        n=n,
        r=r,
        p=p,
        maxmem=_SCRYPT_MAXMEM,
        dklen=_SCRYPT_DKLEN,
    ).hex()


def detect_hash_type(stored: str) -> HashType | None:
    """Guess the hash type of a stored value from its form, or None if it is no hash."""
    value = stored.strip()
    if _HEX64.fullmatch(value):
        return HashType.SHA256
    if _HEX128.fullmatch(value):
        return HashType.SHA512
    if _SCRYPT.fullmatch(value):
        return HashType.SCRYPT
    return None


def hash_matches_type(stored: str, hash_type: HashType) -> bool:
    """Tell whether *stored* has the form that *hash_type* needs (PLAIN accepts anything)."""
    if hash_type is HashType.PLAIN:
        return True
    return detect_hash_type(stored) is hash_type


def verify_password(password: str, stored: str, hash_type: HashType | None = None) -> bool:
    """Check *password* against a stored value in constant time.

    *hash_type* None means: detect it from the stored value's form. Raises
    InvalidHashError when the stored value does not have the form of its type.
    """
    value = stored.strip()
    kind = hash_type if hash_type is not None else detect_hash_type(value)
    if kind is None:
        raise InvalidHashError("not a SHA256, SHA512 or scrypt hash")
    if not hash_matches_type(value, kind):
        raise InvalidHashError(f"the stored value is not a {kind.value} hash")
    data = password.encode("utf-8")
    if kind is HashType.PLAIN:
        return hmac.compare_digest(data, value.encode("utf-8"))
    if kind is HashType.SCRYPT:
        match = _SCRYPT.fullmatch(value)
        assert match is not None  # checked by hash_matches_type
        n, r, p = (int(match.group(i)) for i in (1, 2, 3))
        try:
            digest = _scrypt(data, match.group(4), n, r, p)
        except (ValueError, MemoryError) as exc:
            raise InvalidHashError(f"unusable scrypt parameters: {exc}") from None
        return hmac.compare_digest(digest, match.group(5))
    computed = hash_password(password, kind)
    return hmac.compare_digest(computed, value.lower())
