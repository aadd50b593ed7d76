"""The console's two kinds of answer: JSON for the API, pages for people."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from jdxmail.web.context import context

__all__ = ["ApiError", "error_page", "json_body", "json_error", "page", "wants_json"]


def json_error(status: int, message: str, fix: str | None = None) -> JSONResponse:
    """``{"error": message, "fix": fix}`` with *status* (fix left out when None)."""
    body: dict[str, str] = {"error": message}
    if fix:
        body["fix"] = fix
    return JSONResponse(body, status_code=status, headers={"Cache-Control": "no-store"})


def page(
    request: Request,
    template: str,
    values: dict[str, Any] | None = None,
    *,
    active: str = "",
    status: int = 200,
) -> Response:
    """Render ``templates/<template>`` (which extends base.html) for *request*.

    *active* names the nav entry to highlight (``dashboard``, ``inbox``, ...).
    """
    ctx = context(request)
    return ctx.templates.TemplateResponse(
        request,
        template,
        {"active": active, **(values or {})},
        status_code=status,
        headers={"Cache-Control": "no-store"},
    )


def wants_json(path: str) -> bool:
    """True for API paths (answered with JSON errors), False for pages."""
    return path == "/api" or path.startswith("/api/")


def error_page(request: Request, status: int, message: str, fix: str | None = None) -> Response:
    """An error answer in the form the path expects: JSON under /api, else a page."""
    if wants_json(request.url.path):
        return json_error(status, message, fix)
    return page(
        request, "error.html", {"status": status, "message": message, "fix": fix}, status=status
    )


class ApiError(Exception):
    """Raise in a handler to answer ``{"error", "fix"}`` (API) or an error page."""

    def __init__(self, status: int, message: str, fix: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.fix = fix


async def json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object; raise ApiError 400 when it is not one."""
    raw = await request.body()
    try:
        value = json.loads(raw)
    except UnicodeDecodeError:
        raise ApiError(400, "the request body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ApiError(
            400,
            f"the request body is not valid JSON: {exc.msg} (line {exc.lineno}, "
            f"column {exc.colno})",
            'send a JSON object, e.g. {"name": "value"}, with Content-Type: application/json',
        ) from None
    if not isinstance(value, dict):
        raise ApiError(400, "the request body must be a JSON object", 'e.g. {"name": "value"}')
    return value
