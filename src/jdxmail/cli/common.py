"""Pieces every command uses: the --config option, loading settings, reading passwords."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from jdxmail.cli.exitcodes import ExitCode
from jdxmail.cli.render import err_console, fail, render_findings

if TYPE_CHECKING:
    from jdxmail.settings.files import ConfigError, LoadedConfig

__all__ = ["ConfigOption", "JsonOption", "exit_for_config_error", "load_or_exit", "read_password"]

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


def read_password(*, from_stdin: bool, confirm: bool, what: str = "Password") -> str:
    """A password from one line of stdin, or a hidden prompt on a terminal.

    Exits with a clear message when neither is possible or the password is empty.
    """
    if from_stdin:
        line = sys.stdin.readline()
        password = line.removesuffix("\n").removesuffix("\r")
    elif sys.stdin.isatty():
        try:
            password = typer.prompt(what, hide_input=True, confirmation_prompt=confirm)
        except typer.Abort:
            raise typer.Exit(ExitCode.INTERRUPTED) from None
    else:
        fail(
            "no password given and stdin is not a terminal",
            "pass it with --stdin (one line on standard input), or run on a terminal",
            ExitCode.USAGE,
        )
    if password == "":
        fail("the password is empty", code=ExitCode.USAGE)
    return password
