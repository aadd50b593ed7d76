"""The Typer application: every command of ``jdxmail`` is registered here."""

from __future__ import annotations

from typing import Annotated

import typer

from jdxmail import __version__
from jdxmail.cli import config_cmd, diag_cmds, password_cmd, queue_cmd, serve_cmd, user_cmd
from jdxmail.cli.render import json_errors

__all__ = ["app"]

app = typer.Typer(
    name="jdxmail",
    help=(
        "jdxmail: a local SMTP relay and SMTP diagnostics toolkit.\n\n"
        "Run `jdxmail serve` for a dev inbox on 127.0.0.1:2525 (no config needed); "
        "`jdxmail validate-config` to check appsettings.json."
    ),
    no_args_is_help=True,
    add_completion=False,
    # click's plain help: no `<bool>` beside flags, our own metavars (PORT, SECONDS, PATH)
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"jdxmail {__version__}")
        raise typer.Exit


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", "-V", help="Print the version and exit.", callback=_version, is_eager=True
        ),
    ] = False,
) -> None:
    """jdxmail: a local SMTP relay and SMTP diagnostics toolkit."""
    json_errors(False)  # until a command's --json says otherwise


app.command("serve")(serve_cmd.serve)
app.command("validate-config")(config_cmd.validate_config)
app.command("hash-password")(password_cmd.hash_password)
app.add_typer(user_cmd.app, name="user")
app.add_typer(queue_cmd.app, name="queue")
app.command("check-port")(diag_cmds.check_port)
app.command("test-relay")(diag_cmds.relay_test)
app.command("auth-string")(diag_cmds.auth_string)
app.command("send-test")(diag_cmds.send_test)
app.command("doctor")(diag_cmds.doctor)
