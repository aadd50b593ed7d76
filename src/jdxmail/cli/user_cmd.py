"""``jdxmail user list|add|remove|passwd|check``: SMTP users in the config file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from jdxmail.cli.common import (
    ConfigOption,
    JsonOption,
    exit_for_config_error,
    load_or_exit,
    read_password,
)
from jdxmail.cli.exitcodes import ExitCode
from jdxmail.cli.password_cmd import HashChoice
from jdxmail.cli.render import err_console, fail, out_console, print_json

__all__ = ["app"]

app = typer.Typer(
    help="List, add, remove and re-password SMTP users in the config file (edited in place, "
    "comments and layout kept).",
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


def _apply(
    path: Path, action: str, name: str, password: str | None, kind: HashChoice | None
) -> None:
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
    edit = UserEdit(action, name, stored, hash_type.value if hash_type else None)
    try:
        edit_users(path, edit, create=action == "add")
    except ConfigWriteError as error:
        fail(f"{error} (JDX-F1)", error.fix)
    except UserNotFoundError as error:
        fail(str(error), "see the names with `jdxmail user list`")
    except ConfigError as error:
        raise exit_for_config_error(error) from None


@app.command("list")
def list_users(config: ConfigOption = None, json_output: JsonOption = False) -> None:
    """List the users (names and hash types; never a password or hash)."""
    loaded = load_or_exit(config)
    users = loaded.settings.smtp_server.users
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
        print_json({"config": loaded.source.name, "users": rows})
        return
    if not users:
        out_console.print(f"{loaded.source.name}: no users")
        return
    table = Table(title=loaded.source.name, title_justify="left")
    for column in ("UserName", "HashType", "AllowedSenders"):
        table.add_column(column)
    for row in rows:
        senders = row["AllowedSenders"]
        table.add_row(
            str(row["UserName"]),
            str(row["HashType"]),
            "any" if senders is None else ", ".join(senders) or "only itself",
        )
    out_console.print(table)


@app.command("add")
def add_user(
    name: NameArg,
    config: ConfigOption = None,
    hash_type: TypeOption = HashChoice.scrypt,
    password_stdin: StdinOption = False,
) -> None:
    """Add a user, asking for the password and storing only its hash.

    With no config file yet, this creates ./appsettings.json from the defaults.
    """
    if not name.strip():
        fail("the user name is empty", "give the name the client types at AUTH", ExitCode.USAGE)
    path = _target(config, create=True)
    password = read_password(from_stdin=password_stdin, confirm=True)
    _apply(path, "add", name, password, hash_type)
    err_console.print(f"added user {name!r} to {path}")


@app.command("remove")
def remove_user(
    name: NameArg,
    config: ConfigOption = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Remove a user."""
    path = _target(config, create=False)
    if not yes:
        if not typer.get_text_stream("stdin").isatty():
            fail(f"not removing {name!r} without confirmation", "pass --yes", ExitCode.USAGE)
        if not typer.confirm(f"Remove user {name!r} from {path}?"):
            raise typer.Exit(ExitCode.FAILED)
    _apply(path, "remove", name, None, None)
    err_console.print(f"removed user {name!r} from {path}")


@app.command("passwd")
def change_password(
    name: NameArg,
    config: ConfigOption = None,
    hash_type: TypeOption = HashChoice.scrypt,
    password_stdin: StdinOption = False,
) -> None:
    """Set a user's password (stored as a hash; scrypt unless --type says otherwise)."""
    path = _target(config, create=False)
    password = read_password(from_stdin=password_stdin, confirm=True, what="New password")
    _apply(path, "passwd", name, password, hash_type)
    err_console.print(f"changed the password of {name!r} in {path}")


@app.command("check")
def check_user(
    name: NameArg,
    config: ConfigOption = None,
    password_stdin: StdinOption = False,
) -> None:
    """Tell whether a password is the one stored for a user (exit 0 match, 1 no match).

    The cause of most `535 5.7.8` replies: the stored hash is not the hash of the
    password the client sends.
    """
    from jdxmail import passwords  # noqa: PLC0415
    from jdxmail.settings.edit import UserNotFoundError, user_from  # noqa: PLC0415

    loaded = load_or_exit(config)
    try:
        user = user_from(loaded.source, name)
    except UserNotFoundError as error:
        fail(str(error), "see the names with `jdxmail user list`")
    password = read_password(from_stdin=password_stdin, confirm=False)
    stored = user.password.get_secret_value()
    try:
        matches = passwords.verify_password(password, stored, user.hash_type)
    except passwords.InvalidHashError:
        fail(
            f"user {name!r}: the stored Password is not a {user.hash_type.value} hash (JDX-B2)",
            f"run `jdxmail validate-config`, or reset it with `jdxmail user passwd {name}`",
        )
    if matches:
        out_console.print(f"match: this is the password of {name!r}")
        raise typer.Exit(ExitCode.OK)
    hint = ""
    if password.strip().lower() == stored.strip().lower():
        hint = " (you typed the stored hash; log in with the password itself: JDX-D2)"
    out_console.print(f"no match: this is not the password of {name!r}{hint}")
    raise typer.Exit(ExitCode.FAILED)
