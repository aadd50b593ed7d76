"""`--help` of every command: one spelling, one metavar and one limit per kind of option."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from jdxmail.cli.app import app
from jdxmail.cli.common import TIMEOUT_MAX
from tests.conftest import invoke


def _commands(command: Any = None, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    command = command or typer.main.get_command(app)
    subcommands = getattr(command, "commands", None)
    if subcommands:
        for name, sub in subcommands.items():
            yield from _commands(sub, (*path, name))
    else:
        yield path


COMMANDS = sorted(_commands())


def _options(path: tuple[str, ...]) -> list[Any]:
    command: Any = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    return [p for p in command.params if p.param_type_name == "option"]


def _visible(path: tuple[str, ...]) -> dict[str, Any]:
    """The options --help shows, by every spelling (long and short)."""
    return {name: p for p in _options(path) if not p.hidden for name in p.opts}


def test_every_command_is_checked() -> None:
    """The walk finds the commands users know (a renamed app would make this test hollow)."""
    names = {" ".join(path) for path in COMMANDS}
    assert {"serve", "check-port", "test-relay", "send-test", "user add", "queue list"} <= names


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_help_shows_no_type_placeholders(runner: CliRunner, path: tuple[str, ...]) -> None:
    """Options show PORT, SECONDS, PATH…, never `<bool>` beside a flag or `<int range>`."""
    code, out, _ = invoke(runner, *path, "--help")
    assert code == 0
    options = out.partition("\nOptions:\n")[2]
    assert options
    assert not re.search(r"<[a-z][a-z ]*>", options), options


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_one_spelling_per_kind_of_option(path: tuple[str, ...]) -> None:
    """--port is -p PORT (max 65535), --timeout SECONDS (max 600), --config -c PATH, and so on."""
    options = _visible(path)
    for option in _options(path):
        if option.hidden:
            continue
        if option.is_flag:
            assert option.metavar in (None, ""), option.opts
        else:
            assert option.metavar, f"{option.opts} has no metavar"
            assert re.fullmatch(r"[A-Z][A-Z_\[\]:]*|\[[a-z0-9|]+\]", option.metavar), option.metavar
    if "--port" in options:
        port = options["--port"]
        assert "-p" in port.opts
        assert (port.metavar, port.max) == ("PORT", 65535)
    assert "-p" not in options or "--port" in options["-p"].opts
    if "--timeout" in options:
        timeout = options["--timeout"]
        assert (timeout.metavar, timeout.max) == ("SECONDS", TIMEOUT_MAX)
    if "--config" in options:
        assert "-c" in options["--config"].opts
        assert options["--config"].metavar == "PATH"
    if "--host" in options:
        assert options["--host"].metavar == "HOST[:PORT]"
    if "--json" in options:
        assert options["--json"].help == "Print one JSON document on stdout, errors included."
    # passwords come from stdin under one name; old spellings stay hidden
    assert "--stdin" not in options
    assert "--server" not in options
