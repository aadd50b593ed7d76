"""Every exit code of the jdxmail command, in one place (docs/exit-codes.md lists them)."""

from __future__ import annotations

import enum

__all__ = ["USAGE_EXIT", "ExitCode", "PortExit", "RelayExit"]


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


class PortExit(enum.IntEnum):
    """Exit codes of ``jdxmail check-port`` (docs/check-port.md)."""

    #: the port is free (with --listening: the server answers)
    FREE = 0
    #: another process holds the port
    IN_USE = 1
    #: a privileged port and this process may not bind it
    PRIVILEGE = 2
    #: anything else: address not on this host, not answering, firewalled, bad config
    OTHER = 3


class RelayExit(enum.IntEnum):
    """Exit codes of ``jdxmail test-relay`` and ``send-test``: the stage that failed.

    docs/test-relay.md has the table; with several relays, the first failing one counts.
    """

    OK = 0
    #: bad arguments or an unreadable config
    USAGE = 2
    DNS = 10
    CONNECT = 11
    BANNER = 12
    EHLO = 13
    TLS = 14
    EHLO_TLS = 15
    AUTH = 16
    MAIL = 17
    RCPT = 18
    DATA = 19


#: the exit code for bad arguments where a command's table gives 2 another meaning
USAGE_EXIT: dict[str, int] = {"check-port": PortExit.OTHER}
