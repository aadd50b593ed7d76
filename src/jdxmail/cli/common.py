"""Pieces every command uses: the --config option, loading settings, reading passwords."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from jdxmail.cli.exitcodes import ExitCode
from jdxmail.cli.render import (
    err_console,
    error_json,
    fail,
    json_errors,
    json_requested,
    print_json,
    render_findings,
)

if TYPE_CHECKING:
    from jdxmail.settings.files import ConfigError, LoadedConfig

__all__ = [
    "TIMEOUT_MAX",
    "ConfigOption",
    "JsonOption",
    "exit_for_config_error",
    "load_or_exit",
    "port_option",
    "read_password",
    "read_stdin_line",
    "refuse_control_characters",
    "stdin_is_terminal",
    "timeout_option",
]

#: the one ceiling of every --timeout (seconds): longer than any SMTP server waits
TIMEOUT_MAX = 600

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        metavar="PATH",
        help="Config file (appsettings.json or jdxmail.toml). Default: $JDXMAIL_CONFIG, "
        "./appsettings.json, ./jdxmail.toml, else the built-in defaults.",
        show_default=False,
        dir_okay=True,
    ),
]
JsonOption = Annotated[
    bool,
    typer.Option(
        "--json",
        help="Print one JSON document on stdout, errors included.",
        callback=json_errors,
        is_eager=True,
    ),
]


def port_option(help: str, *, allow_zero: bool = False) -> Any:
    """``--port/-p PORT``: the same spelling and limits on every command that takes a port."""
    return typer.Option(
        "--port",
        "-p",
        metavar="PORT",
        min=0 if allow_zero else 1,
        max=65535,
        help=help,
        show_default=False,
    )


def timeout_option(help: str) -> Any:
    """``--timeout SECONDS``: one floor and one ceiling (TIMEOUT_MAX) everywhere."""
    return typer.Option(
        "--timeout", metavar="SECONDS", min=0.05, max=TIMEOUT_MAX, help=help, show_default=False
    )


def exit_for_config_error(error: ConfigError) -> typer.Exit:
    """Print *error* for a person and return the Exit to raise (2 unreadable, 1 invalid)."""
    # imported here: the settings model (pydantic) is not needed for --help
    from jdxmail.settings.files import (  # noqa: PLC0415
        ConfigFileError,
        ConfigInvalidError,
        ConfigParseError,
    )

    document: dict[str, Any]
    if isinstance(error, ConfigParseError):
        message = f"{error.path}:{error.line}:{error.column}: {error.reason}"
        err_console.print(f"error: {message}", markup=False)
        code, document = ExitCode.USAGE, error_json(message, code=ExitCode.USAGE)
    elif isinstance(error, ConfigFileError):
        err_console.print(f"error: {error}", markup=False)
        if error.fix:
            err_console.print(f"  fix: {error.fix}", markup=False)
        code, document = ExitCode.USAGE, error_json(str(error), error.fix, ExitCode.USAGE)
    elif isinstance(error, ConfigInvalidError):
        render_findings(f"{error.source.name} is not valid", error.findings, err_console)
        err_console.print("run `jdxmail validate-config` for details")
        code = ExitCode.FAILED
        document = error_json(
            f"{error.source.name} is not valid", "run `jdxmail validate-config`", code
        )
        document["findings"] = [f.to_json() for f in error.findings]
    else:
        err_console.print(f"error: {error}", markup=False)
        code, document = ExitCode.FAILED, error_json(str(error))
    if json_requested():
        print_json(document)
    return typer.Exit(code)


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
            "pass it with --password-stdin (one line on standard input), or run on a terminal",
            ExitCode.USAGE,
        )
    if password == "":
        fail("the password is empty", code=ExitCode.USAGE)
    return password


def refuse_control_characters(values: Mapping[str, str | None], code: int = ExitCode.USAGE) -> None:
    """Exit with *code* when a value given on the command line holds a control character.

    *values* maps the flag or argument name (``--from``, ``NAME``) to what was given
    (see :func:`~jdxmail.diagnostics.relay_target.control_character`).
    """
    # (imported here: relay_target loads pydantic, which the --help path never needs)
    from jdxmail.diagnostics.relay_target import control_character  # noqa: PLC0415

    for flag, value in values.items():
        bad = None if value is None else control_character(value)
        if bad is not None:
            fail(
                f"{flag} {value!r} contains a control character ({bad})",
                "give it without line breaks, tabs or other control characters",
                code,
            )
