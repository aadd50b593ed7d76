"""What the Users, Settings and Backup areas share: which file they edit, how a saved
config is applied (as SIGHUP applies it), and how config errors are answered."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from starlette.responses import JSONResponse

from jdxmail.findings import Finding
from jdxmail.settings.edit import ConfigWriteError, UserNotFoundError
from jdxmail.settings.files import (
    ConfigError,
    ConfigFileError,
    ConfigInvalidError,
    ConfigParseError,
)
from jdxmail.settings.save import ConfigChangedError, ConfigRejectedError
from jdxmail.web.context import ConsoleContext
from jdxmail.web.responses import ApiError

__all__ = ["apply_saved", "config_error", "config_file", "findings_json"]

logger = logging.getLogger("jdxmail.web")

#: where a change is written when serve runs on the built-in defaults (as `user add`)
DEFAULT_FILE = Path("appsettings.json")


def config_file(ctx: ConsoleContext, *, create: bool = False) -> Path:
    """The config file the console edits.

    With no file (serve on the built-in defaults) and *create*, ./appsettings.json,
    which a change then creates and a reload reads; else ApiError 409.
    """
    if ctx.config_path is not None:
        return ctx.config_path
    if create:
        return DEFAULT_FILE
    raise ApiError(
        409,
        "serve is running on the built-in defaults: there is no config file",
        "add a user or save the settings to create ./appsettings.json, "
        "or start serve with --config PATH",
    )


def apply_saved(ctx: ConsoleContext, path: Path) -> bool:
    """Apply the saved config to the running server the way SIGHUP does.

    Returns False when the server could not reload it (the change then applies at
    the next start).
    """
    if ctx.config_path is None and path.exists():
        ctx.config_path = path  # the console edits the file it just created from now on
    return ctx.server.reload()


def findings_json(findings: list[Finding]) -> list[dict[str, Any]]:
    """Findings as the API returns them (key, line, message, fix; never a secret)."""
    return [finding.to_json() for finding in findings]


def config_error(error: ConfigError) -> JSONResponse:
    """The API answer for a config that could not be changed; nothing was written.

    409 with the F1 message for a file that cannot be written, 422 with the findings
    for a change that would make it invalid, 404 for an unknown user.
    """
    body: dict[str, Any]
    if isinstance(error, ConfigWriteError):
        body = {"error": f"{error} (JDX-F1)", "fix": error.fix, "row": "JDX-F1"}
        status = 409
    elif isinstance(error, ConfigRejectedError | ConfigInvalidError):
        findings = [f for f in error.findings if f.severity.label == "error"] or error.findings
        first = findings[0]
        body = {
            "error": str(error),
            "fix": first.fix or "see the findings",
            "findings": findings_json(error.findings),
        }
        status = 422
    elif isinstance(error, ConfigChangedError):
        body = {"error": str(error), "fix": error.fix}
        status = 409
    elif isinstance(error, UserNotFoundError):
        body = {"error": str(error), "fix": "see the names on the Users page"}
        status = 404
    elif isinstance(error, ConfigParseError):
        body = {
            "error": str(error),
            "fix": "fix the file's syntax (validate-config shows the line)",
        }
        status = 409
    elif isinstance(error, ConfigFileError):
        body = {"error": str(error), "fix": error.fix or "check the file"}
        status = 409
    else:
        body = {"error": str(error)}
        status = 409
    return JSONResponse(body, status_code=status, headers={"Cache-Control": "no-store"})
