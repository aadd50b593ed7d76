"""The Backup area: download the config file, restore one.

A backup is the config file with every secret (users' hashes, relay passwords)
replaced by the write-only marker: nothing the console returns holds a secret. Restored
on the same server, each marker keeps the secret stored there; a full copy with the
hashes is the file itself, copied on the machine. A restore is
validated first (validate-config's findings; nothing replaced on an error), the
current file is kept next to it as ``<name>.bak-YYYYmmdd-HHMMSS``, and the restored
config is applied as SIGHUP applies it.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from jdxmail.settings import secrets
from jdxmail.settings.backup import export_config, restore_config
from jdxmail.settings.files import ConfigError, source_from_text
from jdxmail.web.configfile import apply_saved, config_error, config_file, findings_json
from jdxmail.web.context import ConsoleContext, context
from jdxmail.web.responses import ApiError, page

__all__ = ["routes"]


def _backups(path: Path) -> list[dict[str, Any]]:
    """The kept copies beside *path*, newest first (names, sizes, times; no content)."""
    found = []
    for copy in path.parent.glob(f"{path.name}.bak-*"):
        try:
            info = copy.stat()
        except OSError:
            continue
        found.append(
            {
                "name": copy.name,
                "size": info.st_size,
                "modified": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(info.st_mtime)),
            }
        )
    return sorted(found, key=lambda b: str(b["name"]), reverse=True)


def _state(ctx: ConsoleContext) -> dict[str, Any]:
    path = ctx.config_path
    if path is None:
        return {"config": None, "backups": []}
    return {"config": str(path), "backups": _backups(path)}


async def backup_page(request: Request) -> Response:
    """``GET /backup``: download and restore the config file."""
    return page(request, "backup.html", _state(context(request)), active="backup")


async def list_backups(request: Request) -> Response:
    """``GET /api/v1/config/backups``: the kept copies of the config file."""
    return JSONResponse(_state(context(request)))


async def download(request: Request) -> Response:
    """``GET /api/v1/config/backup``: the config file, secrets masked, as an attachment."""
    ctx = context(request)
    path = config_file(ctx)
    try:
        data = await asyncio.to_thread(export_config, path)
    except ConfigError as error:
        return config_error(error)
    try:
        data = secrets.redact_text(source_from_text(path, data.decode("utf-8-sig"))).encode()
    except (ConfigError, UnicodeDecodeError):
        raise ApiError(
            409,
            "the config file does not parse, so its secrets cannot be masked",
            "fix the file (validate-config shows the line), or copy it on the machine",
        ) from None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    name = f"{path.stem}-{stamp}{path.suffix}"
    media = "application/toml" if path.suffix.lower() == ".toml" else "application/json"
    return Response(
        data,
        media_type=media,
        headers={
            "Content-Disposition": f'attachment; filename="{name}"',
            "Cache-Control": "no-store",
        },
    )


async def restore(request: Request) -> Response:
    """``POST /api/v1/config/restore``: replace the config by the body (the file's text,
    or JSON ``{"text": ...}``), validated first, the old file kept as a backup."""
    ctx = context(request)
    raw = await request.body()
    text: Any
    if request.headers.get("content-type", "").startswith("application/json"):
        try:
            text = json.loads(raw).get("text")
        except (ValueError, AttributeError):
            text = None
        if not isinstance(text, str):
            raise ApiError(400, 'send {"text": "..."} or the file itself', "see docs/api.md")
    else:
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise ApiError(
                400, "the uploaded file is not UTF-8 text", "upload the config file"
            ) from None
    if not text.strip():
        raise ApiError(400, "the uploaded file is empty", "choose the config file to restore")
    path = config_file(ctx, create=True)
    try:
        restored = await asyncio.to_thread(restore_config, path, text)
    except ConfigError as error:
        return config_error(error)
    applied = apply_saved(ctx, path)
    result = restored.result
    pending = sorted(set(getattr(request.app.state, "restart_pending", [])) | set(result.restart))
    request.app.state.restart_pending = pending
    return JSONResponse(
        {
            "restored": True,
            "config": str(path),
            "backup": restored.backup.name if restored.backup else None,
            "changed": sorted(result.changed),
            "restart": result.restart,
            "restart_pending": pending,
            "applied": applied,
            "findings": findings_json(result.findings),
            "backups": _backups(path),
        }
    )


routes: list[BaseRoute] = [
    Route("/backup", backup_page, methods=["GET"]),
    Route("/api/v1/config/backups", list_backups, methods=["GET"]),
    Route("/api/v1/config/backup", download, methods=["GET"]),
    Route("/api/v1/config/restore", restore, methods=["POST"]),
]
