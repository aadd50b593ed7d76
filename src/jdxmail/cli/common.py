"""Pieces every command uses: the --config option, loading settings, reading passwords."""

from __future__ import annotations

import sys
import unicodedata
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from jdxmail.cli.exitcodes import ExitCode
from jdxmail.cli.render import err_console, fail, render_findings

if TYPE_CHECKING:
    from jdxmail.settings.files import ConfigError, LoadedConfig

__all__ = [
    "ConfigOption",
    "JsonOption",
    "exit_for_config_error",
    "load_or_exit",
    "read_password",
    "read_stdin_line",
    "refuse_control_characters",
    "stdin_is_terminal",
]

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="Config file (appsettings.json or jdxmail.toml). Default: $JDXMAIL_CONFIG, "
        "./appsettings.json, ./jdxmail.toml, else the built-in defaults.",
        show_default=False,
        dir_okay=True,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def exit_for_config_error(error: ConfigError) -> typer.Exit:
    """Print *error* for a person and return the Exit to raise (2 unreadable, 1 invalid)."""
    # imported here: the settings model (pydantic) is not needed for --help
    from jdxmail.settings.files import (  # noqa: PLC0415
        ConfigFileError,
        ConfigInvalidError,
        ConfigParseError,
    )

    if isinstance(error, ConfigParseError):
        err_console.print(f"error: {error.path}:{error.line}:{error.column}: {error.reason}")
        return typer.Exit(ExitCode.USAGE)
    if isinstance(error, ConfigFileError):
        err_console.print(f"error: {error}")
        if error.fix:
            err_console.print(f"  fix: {error.fix}")
        return typer.Exit(ExitCode.USAGE)
    if isinstance(error, ConfigInvalidError):
        render_findings(f"{error.source.name} is not valid", error.findings, err_console)
        err_console.print("run `jdxmail validate-config` for details")
        return typer.Exit(ExitCode.FAILED)
    err_console.print(f"error: {error}")
    return typer.Exit(ExitCode.FAILED)


def load_or_exit(config: Path | None) -> LoadedConfig:
    """Load the settings, or print why not and exit."""
    from jdxmail.settings.files import ConfigError, load_settings  # noqa: PLC0415

    try:
        return load_settings(config)
    except ConfigError as error:
        raise exit_for_config_error(error) from None


def stdin_is_terminal() -> bool:
    """True when stdin is open and a terminal (False when it was closed with ``<&-``)."""
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (OSError, ValueError):
        return False


def read_stdin_line(what: str = "password") -> str:
    """One line of stdin (without its line ending), decoded as UTF-8.

    Exits 2 with a clear message when stdin is closed or the line is not UTF-8.
    """
    stream = sys.stdin
    try:
        if stream is None:
            raise OSError("closed")
        raw = stream.buffer.readline()
    except (OSError, ValueError):
        fail(
            f"stdin is closed, so the {what} cannot be read from it",
            f"give the {what} on one line of standard input, e.g. "
            "`printf '%s\\n' \"$SECRET\" | jdxmail …`",
            ExitCode.USAGE,
        )
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError:
        fail(
            f"the {what} on stdin is not UTF-8 text",
            "send it as UTF-8 (check the terminal's or the script's encoding)",
            ExitCode.USAGE,
        )
    return line.removesuffix("\n").removesuffix("\r")


def read_password(*, from_stdin: bool, confirm: bool, what: str = "Password") -> str:
    """A password from one line of stdin, or a hidden prompt on a terminal.

    Exits with a clear message when neither is possible or the password is empty.
    """
    if from_stdin:
        password = read_stdin_line()
    elif stdin_is_terminal():
        try:
            password = typer.prompt(what, hide_input=True, confirmation_prompt=confirm)
        except typer.Abort:
            raise typer.Exit(ExitCode.INTERRUPTED) from None
    else:
        state = "closed" if sys.stdin is None else "not a terminal"
        fail(
            f"no password given and stdin is {state}",
            "pass it with --stdin (one line on standard input), or run on a terminal",
            ExitCode.USAGE,
        )
    if password == "":
        fail("the password is empty", code=ExitCode.USAGE)
    return password


def refuse_control_characters(values: Mapping[str, str | None], code: int = ExitCode.USAGE) -> None:
    """Exit with *code* when a value given on the command line holds a control character.

    *values* maps the flag or argument name (``--from``, ``NAME``) to what was given.
    CR and LF would end an SMTP command early and smuggle another one onto the wire; no
    address, host or name needs any character of Unicode category Cc.
    """
    for flag, value in values.items():
        if value is None:
            continue
        bad = next((char for char in value if unicodedata.category(char) == "Cc"), None)
        if bad is not None:
            fail(
                f"{flag} {value!r} contains a control character ({_char_name(bad)})",
                "give it without line breaks, tabs or other control characters",
                code,
            )


def _char_name(char: str) -> str:
    names = {"\r": "CR", "\n": "LF", "\t": "tab", "\x00": "NUL"}
    return names.get(char, f"U+{ord(char):04X}")
