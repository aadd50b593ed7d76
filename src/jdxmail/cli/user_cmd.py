"""``jdxmail user list|add|remove|passwd|check``: SMTP users (or, with ``--console``, the
web console's users) in the config file."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from jdxmail.cli.common import (
    ConfigOption,
    JsonOption,
    exit_for_config_error,
    load_or_exit,
    read_password,
    refuse_control_characters,
    stdin_is_terminal,
)
from jdxmail.cli.exitcodes import ExitCode
from jdxmail.cli.password_cmd import HashChoice
from jdxmail.cli.render import err_console, fail, out_console, print_json

if TYPE_CHECKING:
    from jdxmail.settings.files import ConfigSource

__all__ = ["app"]

app = typer.Typer(
    help="List, add, remove and re-password SMTP users (--console: the web console's users) in "
    "the config file (edited in place, comments and layout kept).",
    no_args_is_help=True,
    rich_markup_mode=None,
)

NameArg = Annotated[
    str,
    typer.Argument(metavar="NAME", help="The user's name, as typed at AUTH (often an address)."),
]
StdinOption = Annotated[
    bool, typer.Option("--password-stdin", help="Read the password from one line of stdin.")
]
ConsoleOption = Annotated[
    bool,
    typer.Option(
        "--console",
        help="The web console's users (WebUI.Users: who may log in to the console and the "
        "HTTP API) instead of the SMTP users.",
    ),
]
TypeOption = Annotated[
    HashChoice,
    typer.Option(
        "--type",
        "-t",
        metavar="[scrypt|sha256|sha512]",
        help="How to store the password: scrypt (salted, recommended), sha256 (the guide's "
        "format) or sha512.",
        case_sensitive=False,
    ),
]


def _target(config: Path | None, *, create: bool) -> Path:
    from jdxmail.settings.files import find_config  # noqa: PLC0415

    path = find_config(config)
    if path is not None:
        return path
    if not create:
        fail(
            "there is no config file here (./appsettings.json or ./jdxmail.toml)",
            "pass --config PATH, or add a first user with `jdxmail user add NAME`",
            ExitCode.USAGE,
        )
    return Path("appsettings.json")


def _section(console: bool) -> str:
    return "WebUI" if console else "SmtpServer"


def _kind(console: bool) -> str:
    from jdxmail.settings.edit import user_kind  # noqa: PLC0415

    return user_kind(_section(console))


def _option(console: bool) -> str:
    from jdxmail.settings.edit import user_option  # noqa: PLC0415

    return user_option(_section(console))


def _names_hint(console: bool) -> str:
    return f"see the names with `jdxmail user list{_option(console)}`"


def _apply(
    path: Path,
    action: str,
    name: str,
    password: str | None,
    kind: HashChoice | None,
    *,
    console: bool = False,
) -> ConfigSource:
    from jdxmail import passwords  # noqa: PLC0415
    from jdxmail.settings.edit import (  # noqa: PLC0415
        ConfigWriteError,
        UserEdit,
        UserNotFoundError,
        edit_users,
    )
    from jdxmail.settings.files import ConfigError  # noqa: PLC0415

    stored = hash_type = None
    if password is not None and kind is not None:
        hash_type = passwords.HashType.parse(kind.value)
        stored = passwords.hash_password(password, hash_type)
    edit = UserEdit(
        action, name, stored, hash_type.value if hash_type else None, section=_section(console)
    )
    try:
        return edit_users(path, edit, create=action == "add")
    except ConfigWriteError as error:
        fail(f"{error} (JDX-F1)", error.fix)
    except UserNotFoundError as error:
        fail(str(error), _names_hint(console))
    except ConfigError as error:
        raise exit_for_config_error(error) from None


def _console_users(source: ConfigSource) -> int:
    """How many console users (WebUI.Users) *source* has; 0 if it does not load."""
    from jdxmail.settings.files import ConfigError, settings_from_source  # noqa: PLC0415

    try:
        return len(settings_from_source(source).settings.web_ui.users)
    except ConfigError:
        return 0


def _report_pickup(path: Path, source: ConfigSource) -> None:
    """Say whether a running ``jdxmail serve`` of this config loaded the edit."""
    from jdxmail.server.config_watch import (  # noqa: PLC0415
        Pickup,
        config_digest,
        state_dir,
        wait_for_pickup,
    )
    from jdxmail.settings.files import ConfigError, settings_from_source  # noqa: PLC0415

    try:
        settings = settings_from_source(source).settings
    except ConfigError:
        return
    report = wait_for_pickup(path, state_dir(settings), config_digest(source.text.encode("utf-8")))
    pids = ", ".join(str(pid) for pid in report.pids)
    who = (
        f"the running server (PID {pids})"
        if len(report.pids) == 1
        else f"the {len(report.pids)} running server processes (PIDs {pids})"
    )
    if report.pickup is Pickup.NO_SERVER:
        err_console.print(
            "no running `jdxmail serve` uses this config; the change applies when it starts"
        )
    elif report.pickup is Pickup.LOADED:
        err_console.print(f"{who} loaded the change")
    elif report.pickup is Pickup.REFUSED:
        err_console.print(
            f"warning: {who} could not load the new config and keeps its old settings; see its log",
            style="yellow",
        )
    else:
        err_console.print(
            f"warning: {who} has not loaded the change yet; it looks at the file every "
            f"second (or send it SIGHUP: `kill -HUP {report.pids[0]}`)",
            style="yellow",
        )


@app.command("list")
def list_users(
    config: ConfigOption = None, json_output: JsonOption = False, console: ConsoleOption = False
) -> None:
    """List the users (names and hash types; never a password or hash)."""
    loaded = load_or_exit(config)
    users = loaded.settings.web_ui.users if console else loaded.settings.smtp_server.users
    # the config's own key names (PascalCase), so a script can match a row to the file
    rows = [
        {
            "UserName": u.user_name,
            "HashType": u.hash_type.value,
            "AllowedSenders": u.allowed_senders,
        }
        for u in users
    ]
    if json_output:
        print_json({"config": loaded.source.name, "section": _section(console), "users": rows})
        return
    if not users:
        out_console.print(f"{loaded.source.name}: no {_kind(console)}s")
        return
    title = f"{loaded.source.name}: {_section(console)}.Users"
    table = Table(title=title, title_justify="left")
    columns = ("UserName", "HashType") if console else ("UserName", "HashType", "AllowedSenders")
    for column in columns:
        table.add_column(column)
    for row in rows:
        senders = row["AllowedSenders"]
        cells = [str(row["UserName"]), str(row["HashType"])]
        if not console:
            cells.append("any" if senders is None else ", ".join(senders) or "only itself")
        table.add_row(*cells)
    out_console.print(table)


@app.command("add")
def add_user(
    name: NameArg,
    config: ConfigOption = None,
    hash_type: TypeOption = HashChoice.scrypt,
    password_stdin: StdinOption = False,
    console: ConsoleOption = False,
) -> None:
    """Add a user, asking for the password and storing only its hash.

    With no config file yet, this creates ./appsettings.json from the defaults. The
    first console user (--console) closes the console to everyone who cannot log in.
    """
    refuse_control_characters({"NAME": name})
    if not name.strip():
        fail("the user name is empty", "give the name the client types at AUTH", ExitCode.USAGE)
    path = _target(config, create=True)
    password = read_password(from_stdin=password_stdin, confirm=True)
    source = _apply(path, "add", name, password, hash_type, console=console)
    err_console.print(f"added {_kind(console)} {name!r} to {path}")
    if console and _console_users(source) == 1:
        err_console.print(
            "the web console and its API now ask for a login (a console user and password)"
        )
    _report_pickup(path, source)


@app.command("remove")
def remove_user(
    name: NameArg,
    config: ConfigOption = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    console: ConsoleOption = False,
) -> None:
    """Remove a user."""
    refuse_control_characters({"NAME": name})
    path = _target(config, create=False)
    if not yes:
        if not stdin_is_terminal():
            state = "closed" if sys.stdin is None else "not a terminal"
            fail(
                f"not removing {name!r} without confirmation (stdin is {state})",
                "pass --yes",
                ExitCode.USAGE,
            )
        if not typer.confirm(f"Remove {_kind(console)} {name!r} from {path}?"):
            raise typer.Exit(ExitCode.FAILED)
    source = _apply(path, "remove", name, None, None, console=console)
    err_console.print(f"removed {_kind(console)} {name!r} from {path}")
    _report_pickup(path, source)


@app.command("passwd")
def change_password(
    name: NameArg,
    config: ConfigOption = None,
    hash_type: TypeOption = HashChoice.scrypt,
    password_stdin: StdinOption = False,
    console: ConsoleOption = False,
) -> None:
    """Set a user's password (stored as a hash; scrypt unless --type says otherwise)."""
    refuse_control_characters({"NAME": name})
    path = _target(config, create=False)
    password = read_password(from_stdin=password_stdin, confirm=True, what="New password")
    source = _apply(path, "passwd", name, password, hash_type, console=console)
    err_console.print(f"changed the password of {_kind(console)} {name!r} in {path}")
    _report_pickup(path, source)


@app.command("check")
def check_user(
    name: NameArg,
    config: ConfigOption = None,
    password_stdin: StdinOption = False,
    console: ConsoleOption = False,
) -> None:
    """Tell whether a password is the one stored for a user (exit 0 match, 1 no match).

    The cause of most `535 5.7.8` replies: the stored hash is not the hash of the
    password the client sends.
    """
    from jdxmail import passwords  # noqa: PLC0415
    from jdxmail.settings.edit import UserNotFoundError, user_from  # noqa: PLC0415

    refuse_control_characters({"NAME": name})
    loaded = load_or_exit(config)
    try:
        user = user_from(loaded.source, name, _section(console))
    except UserNotFoundError as error:
        fail(str(error), _names_hint(console))
    password = read_password(from_stdin=password_stdin, confirm=False)
    stored = user.password.get_secret_value()
    try:
        matches = passwords.verify_password(password, stored, user.hash_type)
    except passwords.InvalidHashError:
        fail(
            f"user {name!r}: the stored Password is not a {user.hash_type.value} hash (JDX-B2)",
            "run `jdxmail validate-config`, or reset it with "
            f"`jdxmail user passwd{_option(console)} {name}`",
        )
    if matches:
        out_console.print(f"match: this is the password of {name!r}")
        raise typer.Exit(ExitCode.OK)
    hint = ""
    if password.strip().lower() == stored.strip().lower():
        hint = " (you typed the stored hash; log in with the password itself: JDX-D2)"
    out_console.print(f"no match: this is not the password of {name!r}{hint}")
    raise typer.Exit(ExitCode.FAILED)
