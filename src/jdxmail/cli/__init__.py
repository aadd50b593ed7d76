"""The ``jdxmail`` command: a thin Typer layer over the core.

Each command loads settings, calls the core and renders; only this package prints or
exits. Command modules import what they need when they run, so that ``--help`` and
``--version`` stay fast.
"""

from __future__ import annotations

import os
import sys

# (not typing.TYPE_CHECKING: importing typing is a third of `jdxmail --version`'s time;
# type checkers treat any constant of this name as true)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType

    import click

__all__ = ["main"]


def main() -> None:
    """Entry point: run the app, turning any unexpected error into one line, not a traceback."""
    if sys.argv[1:] in (["--version"], ["-V"]):
        from jdxmail import __version__  # noqa: PLC0415 - fast path, no Typer import

        sys.stdout.write(f"jdxmail {__version__}\n")
        return
    import typer  # noqa: PLC0415

    from jdxmail.cli.app import app  # noqa: PLC0415

    click_errors = _click_errors()
    # Typer's own click copy has no Abort in its exceptions module (typer.Abort is it)
    aborts = tuple({typer.Abort, getattr(click_errors, "Abort", typer.Abort)})
    try:
        code = app(standalone_mode=False)
    except click_errors.UsageError as exc:
        code = _usage_error(exc)
    except click_errors.ClickException as exc:
        exc.show()
        code = exc.exit_code
    except aborts:
        sys.stderr.write("aborted\n")
        code = 1
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    except Exception as exc:
        if os.environ.get("JDXMAIL_DEBUG"):
            raise
        sys.stderr.write(
            f"jdxmail: internal error: {type(exc).__name__}: {exc}\n"
            "This is a bug; please report it with the command you ran "
            "(set JDXMAIL_DEBUG=1 to see the traceback).\n"
        )
        sys.exit(70)  # ExitCode.INTERNAL, without importing the CLI twice
    sys.exit(code if isinstance(code, int) else 0)


def _click_errors() -> ModuleType:
    """The exceptions module of the click that Typer runs on (its own copy since 0.2x)."""
    import importlib  # noqa: PLC0415

    try:
        return importlib.import_module("typer._click.exceptions")
    except ImportError:  # an older Typer, on the click package
        return importlib.import_module("click.exceptions")


def _usage_error(exc: click.UsageError) -> int:
    """Print a bad-arguments error as click does (and as JSON with --json); its exit code.

    The code is 2 (ExitCode.USAGE), except where a command's own table gives 2 another
    meaning (check-port: 2 is "no privilege", so bad arguments are 3, "other").
    """
    from jdxmail.cli.exitcodes import USAGE_EXIT  # noqa: PLC0415
    from jdxmail.cli.render import error_json, print_json  # noqa: PLC0415

    command = exc.ctx.command.name if exc.ctx is not None else None
    code = int(USAGE_EXIT.get(command or "", exc.exit_code))
    exc.show()
    if "--json" in sys.argv[1:]:
        hint = f"see `{exc.ctx.command_path} --help`" if exc.ctx is not None else ""
        print_json(error_json(exc.format_message(), hint, code))
    return code
