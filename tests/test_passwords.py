"""Password hashing: the guide's SHA256 vectors, SHA512, salted scrypt, constant-time verify."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from jdxmail.passwords import (
    HashType,
    InvalidHashError,
    detect_hash_type,
    hash_password,
    verify_password,
)

GUIDE_HASH = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"
SHA512_PASSWORD = (
    "b109f3bbbc244eb82441917ed06d618b9008dd09b3befd1b5e07394c706a8bb9"
    "80b1d7785e5976ec049b46df5f1326af5a2ea6d103fd07c95385ffab0cacbc86"
)


def test_sha256_of_password_is_the_guides_hash() -> None:
    """SHA256 of "password" is the value printed in the guide."""
    assert hash_password("password") == GUIDE_HASH


def test_sha512_vector() -> None:
    """SHA512 of "password" is the well-known 128-hex value."""
    assert hash_password("password", HashType.SHA512) == SHA512_PASSWORD


@pytest.mark.skipif(shutil.which("sha256sum") is None, reason="coreutils sha256sum not installed")
@pytest.mark.parametrize("password", ["password", "パスワード", "with space", "ünïcødé!$"])
def test_sha256_equals_sha256sum(password: str) -> None:
    """The hash equals `echo -n PASSWORD | sha256sum` for UTF-8 passwords, as the guide shows."""
    result = subprocess.run(["sha256sum"], input=password.encode(), capture_output=True, check=True)
    assert hash_password(password) == result.stdout.split()[0].decode()


def test_scrypt_is_salted_and_self_describing() -> None:
    """Two scrypt hashes of one password differ and both carry their parameters."""
    first = hash_password("password", HashType.SCRYPT)
    second = hash_password("password", HashType.SCRYPT)
    assert first != second
    assert re.fullmatch(r"scrypt:32768:8:1\$[A-Za-z0-9_-]+\$[0-9a-f]{64}", first)
    assert verify_password("password", first)
    assert verify_password("password", second)
    assert not verify_password("Password", first)


@pytest.mark.parametrize(
    ("stored", "kind"),
    [
        (GUIDE_HASH, HashType.SHA256),
        (GUIDE_HASH.upper(), HashType.SHA256),
        (SHA512_PASSWORD, HashType.SHA512),
        ("password", None),
        ("", None),
    ],
)
def test_detect_hash_type(stored: str, kind: HashType | None) -> None:
    """The type of a stored value is recognised from its form."""
    assert detect_hash_type(stored) is kind


def test_verify_detects_type_and_rejects_wrong_passwords() -> None:
    """verify_password accepts the right password for each type and refuses others."""
    for kind in (HashType.SHA256, HashType.SHA512, HashType.SCRYPT):
        stored = hash_password("s3cret", kind)
        assert verify_password("s3cret", stored)
        assert verify_password("s3cret", stored, kind)
        assert not verify_password("s3cret ", stored)


def test_verify_plain_and_mismatched_types() -> None:
    """PLAIN compares the text itself; a value that is not of its type raises."""
    assert verify_password("abc", "abc", HashType.PLAIN)
    assert not verify_password("abd", "abc", HashType.PLAIN)
    with pytest.raises(InvalidHashError):
        verify_password("password", "password", HashType.SHA256)
    with pytest.raises(InvalidHashError):
        verify_password("password", "not-a-hash")
    with pytest.raises(InvalidHashError):
        verify_password("password", "scrypt:3:8:1$abc$00")


def test_hash_type_parse_is_case_insensitive() -> None:
    """HashType values from a config match whatever their case."""
    assert HashType.parse("sha256") is HashType.SHA256
    assert HashType.parse(" Scrypt ") is HashType.SCRYPT
    with pytest.raises(ValueError, match="expected one of"):
        HashType.parse("md5")
