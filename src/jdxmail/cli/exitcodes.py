"""Every exit code of the jdxmail command, in one place (docs/exit-codes.md lists them)."""

from __future__ import annotations

import enum

__all__ = ["ExitCode"]


class ExitCode(enum.IntEnum):
    """Process exit codes shared by all commands."""

    #: success: the config is valid, the password matches, the server stopped cleanly
    OK = 0
    #: the check found errors, the password does not match, the server could not start
    FAILED = 1
    #: the input could not be used: unreadable or unparsable config, bad arguments
    USAGE = 2
    #: a bug in jdxmail (an unexpected error; reported in one line, not a traceback)
    INTERNAL = 70
    #: the command was interrupted (Ctrl-C)
    INTERRUPTED = 130
