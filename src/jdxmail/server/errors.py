"""Why the server could not start: one small error tree, each with the fix for users."""

from __future__ import annotations

import errno
import os
import sys

__all__ = [
    "BindError",
    "PortInUseError",
    "PortPermissionError",
    "ServerDisabledError",
    "ServerError",
    "StorageError",
    "bind_error",
    "port_owner",
]


class ServerError(Exception):
    """Base of every startup failure; ``str()`` says what, ``fix`` what to do."""

    def __init__(self, message: str, fix: str = "", row: str | None = None) -> None:
        super().__init__(message)
        self.fix = fix
        #: the TROUBLESHOOTING-MAP row (A1, A2, A3) when it is one of the guide's causes
        self.row = row


class ServerDisabledError(ServerError):
    """``SmtpServer.Enabled`` is false (row A3)."""


class StorageError(ServerError):
    """The spool or mailbox folder cannot be used."""


class BindError(ServerError, OSError):
    """The listening socket cannot be opened."""

    def __init__(self, message: str, fix: str = "", row: str | None = None) -> None:
        ServerError.__init__(self, message, fix, row)


class PortInUseError(BindError):
    """Another process listens on the port (row A1)."""


class PortPermissionError(BindError):
    """The port is below 1024 and this process may not bind it (row A2)."""


def port_owner(port: int) -> str | None:
    """``name (PID n, user u)`` of the process listening on TCP *port*, when visible."""
    try:
        import psutil  # noqa: PLC0415 - only needed when the port is taken

        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                if conn.pid is None:
                    return None
                process = psutil.Process(conn.pid)
                return f"{process.name()} (PID {conn.pid}, user {process.username()})"
    except Exception:  # the owner is only a hint
        return None
    return None


#: the serve flag that overrides each port key, with a port to suggest
_PORT_FLAGS = {
    "SmtpServer.Port": "--port 2525",
    "SmtpServer.Tls.ImplicitTlsPort": "--tls-port 4465",
    "WebUI.Port": "--web-port 5002",
    "Metrics.Port": "--metrics-port 9465",
}


def bind_error(exc: OSError, host: str, port: int, key: str = "SmtpServer.Port") -> BindError:
    """Turn an OSError from binding *host*:*port* into a BindError with the fix."""
    where = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
    flag = _PORT_FLAGS.get(key)
    other = f"`jdxmail serve {flag}` or set {key}" if flag else f"set {key}"
    if exc.errno == errno.EADDRINUSE:
        owner = port_owner(port)
        by = f" by {owner}" if owner else ""
        stop = ""
        if owner and owner.split(" ", 1)[0] in ("master", "postfix", "sendmail", "exim4", "exim"):
            stop = "stop it (`sudo systemctl stop postfix`) or "
        return PortInUseError(
            f"cannot listen on {where}: the port is already in use{by}",
            f"{stop}choose another port: {other}",
            row="A1",
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        if port < 1024 and sys.platform != "win32":
            exe = os.path.realpath(sys.executable)
            return PortPermissionError(
                f"cannot listen on {where}: ports below 1024 need privileges",
                f"use a port above 1023 ({other}), or grant "
                f"the capability: `sudo setcap 'cap_net_bind_service=+ep' {exe}`, or run it "
                "from a systemd unit with AmbientCapabilities=CAP_NET_BIND_SERVICE",
                row="A2",
            )
        return PortPermissionError(f"cannot listen on {where}: permission denied", row="A2")
    if exc.errno == errno.EADDRNOTAVAIL:
        return BindError(
            f"cannot listen on {where}: {host} is not an address of this machine",
            "set SmtpServer.BindAddress to 127.0.0.1, 0.0.0.0 or one of this machine's "
            "addresses (or pass --bind)",
        )
    return BindError(f"cannot listen on {where}: {exc.strerror or exc}")
