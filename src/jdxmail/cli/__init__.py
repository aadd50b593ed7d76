"""The ``jdxmail`` command: a thin Typer layer over the core.

Each command loads settings, calls the core and renders; only this package prints or
exits. Command modules import what they need when they run, so that ``--help`` and
``--version`` stay fast.
"""

from __future__ import annotations

import os
import sys

__all__ = ["main"]


def main() -> None:
    """Entry point: run the app, turning any unexpected error into one line, not a traceback."""
    if sys.argv[1:] in (["--version"], ["-V"]):
        from jdxmail import __version__  # noqa: PLC0415 - fast path, no Typer import

        sys.stdout.write(f"jdxmail {__version__}\n")
        return
    from jdxmail.cli.app import app  # noqa: PLC0415

    try:
        app()
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
