"""``jdxmail hash-password``."""

from __future__ import annotations

import enum
from typing import Annotated

import typer

from jdxmail.cli.common import read_password
from jdxmail.cli.exitcodes import ExitCode
from jdxmail.cli.render import err_console, fail, out_console

__all__ = ["HashChoice", "hash_password"]


class HashChoice(enum.StrEnum):
    """Hash types offered on the command line."""

    sha256 = "sha256"
    sha512 = "sha512"
    scrypt = "scrypt"


def hash_password(
    password: Annotated[
        str | None,
        typer.Argument(
            metavar="PASSWORD",
            help="The password. Omit it to be asked (hidden), or use --password-stdin, to "
            "keep it out of shell history.",
            show_default=False,
        ),
    ] = None,
    hash_type: Annotated[
        HashChoice,
        typer.Option(
            "--type",
            "-t",
            metavar="[sha256|sha512|scrypt]",
            help="sha256 (the guide's format, unsalted), sha512, or scrypt (salted; "
            "recommended for new users, with HashType SCRYPT).",
            case_sensitive=False,
        ),
    ] = HashChoice.sha256,
    password_stdin: Annotated[
        bool,
        typer.Option("--password-stdin", help="Read the password from one line of stdin."),
    ] = False,
    old_stdin: Annotated[
        bool, typer.Option("--stdin", hidden=True, help="Deprecated: --password-stdin.")
    ] = False,
    verify: Annotated[
        str | None,
        typer.Option(
            "--verify",
            metavar="HASH",
            help="Check the password against a stored SHA256, SHA512 or scrypt value: "
            "exit 0 on match, 1 on no match.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Print the hash of a password for the Password key of a user (SHA256 by default).

    `jdxmail hash-password password` prints the same as `echo -n password | sha256sum`:
    5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8
    """
    from jdxmail import passwords  # noqa: PLC0415

    if old_stdin:
        err_console.print("note: --stdin is now --password-stdin (as for every command)")
    stdin = password_stdin or old_stdin
    if password is not None and stdin:
        fail(
            "give the password as an argument or with --password-stdin, not both",
            code=ExitCode.USAGE,
        )
    if password is None:
        password = read_password(from_stdin=stdin, confirm=verify is None)
    if verify is not None:
        try:
            matches = passwords.verify_password(password, verify)
        except passwords.InvalidHashError as exc:
            fail(
                f"--verify: {exc}",
                "pass the Password value of the user exactly as stored in the config",
                ExitCode.USAGE,
            )
        if matches:
            out_console.print("match")
            raise typer.Exit(ExitCode.OK)
        out_console.print("no match")
        raise typer.Exit(ExitCode.FAILED)
    kind = passwords.HashType.parse(hash_type.value)
    typer.echo(passwords.hash_password(password, kind))
