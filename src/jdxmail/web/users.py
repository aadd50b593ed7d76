"""The Users area: SMTP users listed, added, re-passworded and removed.

The same core as ``jdxmail user`` (settings.edit): the config file is edited in place
with comments kept, and the change is applied at once (as SIGHUP applies it), so a
user added here can log in over SMTP right away. Names and hash types are shown;
passwords and hashes never leave the server.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from jdxmail import passwords
from jdxmail.settings.edit import UserEdit, edit_users
from jdxmail.settings.files import ConfigError, inspect_source, read_source
from jdxmail.settings.model import UserSettings
from jdxmail.web.configfile import apply_saved, config_error, config_file
from jdxmail.web.context import ConsoleContext, context
from jdxmail.web.responses import ApiError, json_body, page

__all__ = ["HASH_CHOICES", "routes"]

#: the stored forms offered for a new password, recommended first
HASH_CHOICES = (
    ("scrypt", "scrypt (salted, recommended)"),
    ("sha256", "SHA256 (the JumboDogX guide's format)"),
    ("sha512", "SHA512"),
)


def _user_json(user: UserSettings) -> dict[str, Any]:
    return {
        "user_name": user.user_name,
        "hash_type": user.hash_type.value,
        "allowed_senders": user.allowed_senders,
    }


def _users(ctx: ConsoleContext) -> list[dict[str, Any]]:
    """The users of the config file (what a reload applies), each marked whether the
    running server has it as it is in the file; the running ones without a file."""
    running = {u.user_name: u for u in ctx.server.settings.smtp_server.users}
    configured = list(running.values())
    if ctx.config_path is not None:
        try:
            settings, _ = inspect_source(read_source(ctx.config_path))
        except ConfigError:
            settings = None
        if settings is not None:
            configured = settings.smtp_server.users
    return [
        {**_user_json(user), "active": running.get(user.user_name) == user} for user in configured
    ]


def _config_name(ctx: ConsoleContext) -> str:
    return str(ctx.config_path) if ctx.config_path is not None else "built-in defaults"


async def users_page(request: Request) -> Response:
    """``GET /users``: the users, and forms to add, re-password and remove them."""
    ctx = context(request)
    return page(
        request,
        "users.html",
        {
            "users": _users(ctx),
            "config": str(ctx.config_path) if ctx.config_path is not None else None,
            "hash_choices": HASH_CHOICES,
        },
        active="users",
    )


async def list_users(request: Request) -> Response:
    """``GET /api/v1/users``: names, hash types and allowed senders of the SMTP users."""
    ctx = context(request)
    return JSONResponse({"config": _config_name(ctx), "users": _users(ctx)})


def _password_fields(body: dict[str, Any]) -> tuple[str, passwords.HashType]:
    password = body.get("password")
    if not isinstance(password, str) or password == "":
        raise ApiError(400, "the password is empty", 'send {"password": "..."}')
    kind = body.get("hash_type", "scrypt")
    try:
        hash_type = passwords.HashType.parse(str(kind))
    except ValueError as exc:
        raise ApiError(400, str(exc), "use scrypt, sha256 or sha512") from None
    if hash_type is passwords.HashType.PLAIN:
        raise ApiError(
            400, "the console does not store passwords in clear", "use scrypt, sha256 or sha512"
        )
    return password, hash_type


async def _change(request: Request, action: str, name: str, body: dict[str, Any]) -> Response:
    """Hash (in a thread), edit the file (in a thread), apply; the API answer."""
    ctx = context(request)
    stored = hash_value = None
    if action != "remove":
        password, hash_type = _password_fields(body)
        stored = await asyncio.to_thread(passwords.hash_password, password, hash_type)
        hash_value = hash_type.value
    path = config_file(ctx, create=action == "add")
    edit = UserEdit(action, name, stored, hash_value)
    try:
        await asyncio.to_thread(edit_users, path, edit, create=action == "add")
    except ConfigError as error:
        return config_error(error)
    applied = apply_saved(ctx, path)
    answer: dict[str, Any] = {"config": str(path), "applied": applied, "users": _users(ctx)}
    if not applied:
        answer["note"] = "saved; the running server keeps the old users until it restarts"
    return JSONResponse(answer, status_code=201 if action == "add" else 200)


async def add_user(request: Request) -> Response:
    """``POST /api/v1/users``: add a user (``user_name``, ``password``, ``hash_type``)."""
    body = await json_body(request)
    name = body.get("user_name")
    if not isinstance(name, str) or not name.strip():
        raise ApiError(
            400,
            "the user name is empty",
            "give the name the client types at AUTH (often an address)",
        )
    return await _change(request, "add", name.strip(), body)


async def change_password(request: Request) -> Response:
    """``PUT /api/v1/users/{name}/password``: set a new password (``password``, ``hash_type``)."""
    body = await json_body(request)
    return await _change(request, "passwd", request.path_params["name"], body)


async def remove_user(request: Request) -> Response:
    """``DELETE /api/v1/users/{name}``: remove a user."""
    return await _change(request, "remove", request.path_params["name"], {})


routes: list[BaseRoute] = [
    Route("/users", users_page, methods=["GET"]),
    Route("/api/v1/users", list_users, methods=["GET"]),
    Route("/api/v1/users", add_user, methods=["POST"]),
    Route("/api/v1/users/{name}/password", change_password, methods=["PUT"]),
    Route("/api/v1/users/{name}", remove_user, methods=["DELETE"]),
]
