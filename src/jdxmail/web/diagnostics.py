"""Diagnostics (``/diagnostics``): test-relay, check-port and doctor from the page.

The same core as the CLI (:mod:`jdxmail.diagnostics`): the staged results (✓/✗,
milliseconds, what was seen) and the findings with their fixes come back as the
JSON of ``--json``. Relay passwords come from the config and never leave the server.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from jdxmail.diagnostics import port as port_check
from jdxmail.diagnostics.doctor import run_doctor
from jdxmail.diagnostics.relay_probe import ProbeOptions, config_targets, probe_relay
from jdxmail.web.context import context
from jdxmail.web.responses import ApiError, json_body, page

__all__ = ["routes"]

#: the longest a step of test-relay may wait, in seconds (the page waits for it)
MAX_TIMEOUT = 60.0


async def _body(request: Request) -> dict[str, Any]:
    """The JSON object of the request; an empty body counts as ``{}``."""
    if not (await request.body()).strip():
        return {}
    return await json_body(request)


def _text(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ApiError(400, f"{key} must be a string")
    return value.strip()


def _number(body: dict[str, Any], key: str, low: float, high: float) -> float | None:
    value = body.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ApiError(400, f"{key} must be a number from {low:g} to {high:g}")
    try:
        number = float(value)
    except ValueError:
        raise ApiError(400, f"{key} must be a number from {low:g} to {high:g}") from None
    if not low <= number <= high:
        raise ApiError(400, f"{key} must be a number from {low:g} to {high:g}")
    return number


def _flag(body: dict[str, Any], key: str, default: bool) -> bool:
    value = body.get(key, default)
    if not isinstance(value, bool):
        raise ApiError(400, f"{key} must be true or false")
    return value


async def diagnostics_page(request: Request) -> Response:
    """``GET /diagnostics``: forms for the three checks."""
    ctx = context(request)
    settings = ctx.server.settings
    return page(
        request,
        "diagnostics.html",
        {
            "relays": [r.display_name for r in settings.relays],
            "port": next((a.port for a in ctx.server.addresses if not a.implicit_tls), None)
            or settings.smtp_server.port,
            "bind": settings.smtp_server.bind_address,
        },
        active="diagnostics",
    )


async def test_relay(request: Request) -> Response:
    """``POST /api/v1/diagnostics/test-relay``: walk a session with the configured relays.

    Body (all optional): ``relay`` (a name; default every relay), ``mail_from`` and
    ``rcpt_to`` (also try MAIL and RCPT), ``send`` (really send a test message),
    ``timeout`` (seconds per step).
    """
    ctx = context(request)
    body = await _body(request)
    name = _text(body, "relay")
    mail_from = _text(body, "mail_from")
    rcpt_to = _text(body, "rcpt_to")
    send = _flag(body, "send", False)
    timeout = _number(body, "timeout", 0.1, MAX_TIMEOUT)
    if send and (mail_from is None or rcpt_to is None):
        raise ApiError(400, "send needs mail_from and rcpt_to")
    settings = ctx.server.settings
    targets = config_targets(settings)
    if not targets:
        raise ApiError(
            400,
            "the config has no relay (RelayServer / RelayServers)",
            "add one on the Settings page, or use `jdxmail test-relay --provider ...`",
        )
    if name is not None:
        targets = [t for t in targets if t.name.casefold() == name.casefold()]
        if not targets:
            names = ", ".join(r.display_name for r in settings.relays)
            raise ApiError(404, f"no relay named {name!r}", f"use one of: {names}")
    if timeout is not None:
        targets = [replace(t, timeout=timeout) for t in targets]
    try:
        options = ProbeOptions(mail_from=mail_from, rcpt_to=rcpt_to, send=send)
    except ValueError as exc:
        raise ApiError(
            400, str(exc), "give the address on one line, without control characters"
        ) from exc
    reports = [await probe_relay(t, options) for t in targets]
    return JSONResponse(
        {"ok": all(r.ok for r in reports), "relays": [r.to_json() for r in reports]}
    )


async def check_port(request: Request) -> Response:
    """``POST /api/v1/diagnostics/check-port``: can the server listen / does it answer?

    Body (all optional): ``port`` and ``bind`` (default: this server's), ``listening``
    (default true: connect and read the banner, from loopback and the network; false:
    try to bind the port now, as a server starting would), ``timeout`` (seconds per
    banner).
    """
    ctx = context(request)
    body = await _body(request)
    settings = ctx.server.settings
    bound = next((a.port for a in ctx.server.addresses if not a.implicit_tls), None)
    number = _number(body, "port", 1, 65535)
    port = int(number) if number is not None else bound or settings.smtp_server.port
    bind = _text(body, "bind") or settings.smtp_server.bind_address
    listening = _flag(body, "listening", True)
    timeout = _number(body, "timeout", 0.05, MAX_TIMEOUT) or 5.0
    if listening:
        report = await port_check.check_listening(bind, port, wait=timeout)
    else:
        report = await asyncio.to_thread(port_check.check_port, bind, port)
    return JSONResponse({**report.to_json(), "listening": listening})


async def doctor(request: Request) -> Response:
    """``POST /api/v1/diagnostics/doctor``: every check of ``jdxmail doctor`` on the config."""
    ctx = context(request)
    body = await _body(request)
    timeout = _number(body, "timeout", 0.1, MAX_TIMEOUT)
    # doctor reads files and asks psutil who holds the port, without threads of its own
    # (it was written for the CLI): its own event loop in a thread keeps serve's free
    report = await asyncio.to_thread(
        asyncio.run, run_doctor(ctx.config_path, relay_timeout=timeout)
    )
    return JSONResponse(report.to_json())


routes: list[BaseRoute] = [
    Route("/diagnostics", diagnostics_page, methods=["GET"]),
    Route("/api/v1/diagnostics/test-relay", test_relay, methods=["POST"]),
    Route("/api/v1/diagnostics/check-port", check_port, methods=["POST"]),
    Route("/api/v1/diagnostics/doctor", doctor, methods=["POST"]),
]
