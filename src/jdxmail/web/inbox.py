"""The dev inbox in the console: ``/inbox`` pages and the ``/api/v1/messages`` API.

Everything here is HTTP: the messages come from the server's
:class:`jdxmail.inbox.index.MailboxIndex`, parsing from :mod:`jdxmail.inbox.message`,
checks from :mod:`jdxmail.inbox.checks`, release from :mod:`jdxmail.inbox.release`,
chaos from :mod:`jdxmail.server.chaos`. A message id only ever reaches the disk
through a lookup in the index; an unknown id or attachment number is a 404.

The HTML of a mail is served by ``/inbox/{id}/html`` for a sandboxed iframe, with
its own Content-Security-Policy: no script at all, and no remote image, style or
font unless the page asks for ``?remote=1`` (the "load remote content" button).
"""

from __future__ import annotations

import asyncio
import base64
import html
import re
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from jdxmail.inbox.checks import CheckReport, check_message
from jdxmail.inbox.index import MailboxIndex, MessageEntry
from jdxmail.inbox.message import ParsedMessage, attachment_parts, parse_message, parse_raw
from jdxmail.inbox.release import ReleaseError, parse_recipients, release
from jdxmail.queue.spool import SpoolError
from jdxmail.server.chaos import CHAOS_CODES, STAGES, ChaosRule
from jdxmail.web.context import ConsoleContext, context
from jdxmail.web.responses import ApiError, json_body, page

__all__ = ["routes", "setup"]

#: page size of the list (the API's default and largest ?limit=)
PAGE_SIZE = 50
MAX_LIMIT = 1000
#: how much of the source the Raw tab shows (the download has all of it)
RAW_SHOWN = 256 * 1024
#: the longest a wait-for-message call may wait, in seconds
MAX_WAIT = 300.0
#: cid: images up to this size are shown in the HTML (as data: URLs)
_INLINE_IMAGE_LIMIT = 5 * 1024 * 1024
_CID = re.compile(r"""(?i)(["'(])cid:([^"')\s>]+)""")

#: the HTML mail's policy: no script ever; remote content only when asked for
_FRAME_CSP = (
    "default-src 'none'; script-src 'none'; object-src 'none'; img-src 'self' data:; "
    "style-src 'unsafe-inline'; font-src data:; media-src 'none'; form-action 'none'; "
    "frame-ancestors 'self'; sandbox allow-popups allow-popups-to-escape-sandbox"
)
_FRAME_CSP_REMOTE = (
    "default-src 'none'; script-src 'none'; object-src 'none'; "
    "img-src 'self' data: http: https:; style-src 'unsafe-inline' http: https:; "
    "font-src data: http: https:; media-src 'none'; form-action 'none'; "
    "frame-ancestors 'self'; sandbox allow-popups allow-popups-to-escape-sandbox"
)
#: attachments are downloads, never pages of the console's origin
_ATTACHMENT_CSP = "default-src 'none'; sandbox"


def setup(ctx: ConsoleContext) -> None:
    """Publish a ``message`` event for each new mail of the server's inbox."""
    index = ctx.server.inbox
    if index is None:
        return

    def publish(entry: MessageEntry) -> None:
        if ctx.events.listeners:  # no open page: not even the JSON is built
            ctx.events.publish("message", summary_json(entry))

    # removals in one turn of the loop (Delete all, retention) go out as one event
    removed: list[str] = []

    def publish_removals() -> None:
        ids = removed[:]
        removed.clear()
        ctx.events.publish("removed", {"ids": ids})

    def on_removed(message_id: str) -> None:
        if not ctx.events.listeners:
            return
        if not removed:
            asyncio.get_running_loop().call_soon(publish_removals)
        removed.append(message_id)

    index.subscribe(publish)
    index.subscribe_removals(on_removed)


# -- JSON shapes ---------------------------------------------------------------------------


def _iso(when: float) -> str:
    return (
        datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def summary_json(entry: MessageEntry) -> dict[str, Any]:
    """One message as the list shows it."""
    summary = entry.summary
    return {
        "id": entry.id,
        "mailbox": entry.folder,
        "from": summary.sender,
        "to": list(summary.to),
        "cc": list(summary.cc),
        "subject": summary.subject,
        "date": summary.date,
        "created": _iso(entry.time),
        "size": entry.size,
        "attachments": summary.attachments,
        "message_id": summary.message_id,
        "envelope": {
            "mail_from": summary.envelope.mail_from,
            "rcpt_to": summary.envelope.rcpt_to,
        },
    }


def message_json(entry: MessageEntry, parsed: ParsedMessage) -> dict[str, Any]:
    """One message in full: envelope, session, headers, text, HTML, attachments."""
    base = f"/api/v1/messages/{entry.id}"
    session = parsed.session
    return {
        **summary_json(entry),
        "session": None
        if session is None
        else {
            "client_address": session.client_address,
            "helo": session.helo,
            "protocol": session.protocol,
            "tls": session.tls,
            "auth_user": session.auth_user,
            "transaction_id": session.transaction_id,
            "received": session.received,
        },
        "headers": [[name, value] for name, value in parsed.headers],
        "text": parsed.text,
        "html": parsed.html,
        "attachments": [
            {
                "n": a.index,
                "filename": a.filename,
                "content_type": a.content_type,
                "size": a.size,
                "inline": a.inline,
                "content_id": a.content_id,
                "url": f"{base}/attachments/{a.index}",
            }
            for a in parsed.attachments
        ],
        "raw_url": f"{base}/raw",
    }


def checks_json(report: CheckReport) -> dict[str, Any]:
    """The dev checks of a message."""
    return {
        "html_size": report.html_size,
        "text_size": report.text_size,
        "findings": [
            {"code": f.code, "severity": f.severity, "message": f.message, "count": f.count}
            for f in report.findings
        ],
        "links": [
            {"href": link.href, "text": link.text, "source": link.source, "problem": link.problem}
            for link in report.links
        ],
        "images": [{"src": i.src, "alt": i.alt} for i in report.images],
    }


def chaos_json(ctx: ConsoleContext) -> dict[str, Any]:
    """The chaos rules, every stage listed (null: no failure injected there)."""
    chaos = ctx.server.chaos
    rules: dict[str, Any] = {}
    for stage in STAGES:
        rule = chaos.rules.get(stage)
        rules[stage] = (
            None if rule is None else {"code": rule.code, "probability": rule.probability}
        )
    return {"active": chaos.active, "rules": rules, "codes": sorted(CHAOS_CODES)}


# -- helpers -------------------------------------------------------------------------------


def _index(request: Request) -> MailboxIndex:
    index = context(request).server.inbox
    if index is None:
        raise ApiError(
            503,
            "the inbox does not run in this process",
            "open the console of the first worker, or run serve without --workers",
        )
    return index


def _entry(request: Request) -> MessageEntry:
    message_id = request.path_params["id"]
    entry = _index(request).get(message_id)
    if entry is None:
        raise ApiError(
            404,
            f"no message with id {message_id[:40]!r}",
            "list the messages with GET /api/v1/messages; it may have been deleted",
        )
    return entry


async def _raw(request: Request, entry: MessageEntry) -> bytes:
    try:
        return await _index(request).read(entry)
    except OSError:
        raise ApiError(404, "the message file is gone (deleted meanwhile)") from None


async def _parsed(request: Request) -> tuple[MessageEntry, bytes, ParsedMessage]:
    entry = _entry(request)
    raw = await _raw(request, entry)
    parsed = await asyncio.to_thread(parse_message, raw)
    return entry, raw, parsed


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    value = request.query_params.get(name)
    if value is None or value == "":
        return default
    if not value.isdigit():
        raise ApiError(400, f"?{name}= must be a whole number, not {value[:20]!r}")
    return max(low, min(high, int(value)))


def _attachment_name(name: str) -> str:
    """A download file name: no path, no control characters."""
    cleaned = re.sub(r"[\x00-\x1f\x7f/\\]", "_", name).strip(". ") or "attachment"
    return cleaned[:150]


def _disposition(kind: str, name: str) -> str:
    ascii_name = _attachment_name(name).encode("ascii", "replace").decode().replace('"', "_")
    return f"{kind}; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(_attachment_name(name))}"


# -- API -----------------------------------------------------------------------------------


async def list_messages(request: Request) -> Response:
    """``GET /api/v1/messages``: newest first; ``?query=``, ``?start=``, ``?limit=``."""
    index = _index(request)
    await index.ready()
    start = _int_param(request, "start", 0, 0, 10**9)
    limit = _int_param(request, "limit", PAGE_SIZE, 1, MAX_LIMIT)
    query = request.query_params.get("query", "")[:500]
    result = await index.page(start, limit, query)
    return JSONResponse(
        {
            "total": result.total,
            "start": result.start,
            "count": len(result.messages),
            "query": query,
            "messages": [summary_json(m) for m in result.messages],
        }
    )


async def get_message(request: Request) -> Response:
    """``GET /api/v1/messages/{id}``: the whole message."""
    entry, _, parsed = await _parsed(request)
    return JSONResponse(message_json(entry, parsed))


async def get_raw(request: Request) -> Response:
    """``GET /api/v1/messages/{id}/raw``: the file as stored (``?download=1``: as .eml)."""
    entry = _entry(request)
    raw = await _raw(request, entry)
    headers = {"Content-Security-Policy": _ATTACHMENT_CSP}
    if request.query_params.get("download"):
        headers["Content-Disposition"] = _disposition("attachment", f"{entry.id}.eml")
        return Response(raw, media_type="message/rfc822", headers=headers)
    return Response(raw, media_type="text/plain; charset=utf-8", headers=headers)


async def get_attachment(request: Request) -> Response:
    """``GET /api/v1/messages/{id}/attachments/{n}``: one attachment, as a download."""
    entry = _entry(request)
    number = request.path_params["n"]
    raw = await _raw(request, entry)
    parts = await asyncio.to_thread(lambda: attachment_parts(parse_raw(raw)))
    if not number.isdigit() or int(number) >= len(parts):
        raise ApiError(
            404,
            f"message {entry.id} has no attachment {number[:20]!r}",
            f"it has {len(parts)}, numbered from 0 (see GET /api/v1/messages/{entry.id})",
        )
    part: EmailMessage = parts[int(number)]
    payload = part.get_payload(decode=True)
    data = payload if isinstance(payload, bytes) else b""
    name = part.get_filename() or f"part-{number}"
    return Response(
        data,
        media_type=part.get_content_type(),
        headers={
            "Content-Disposition": _disposition("attachment", name),
            "Content-Security-Policy": _ATTACHMENT_CSP,
        },
    )


async def get_checks(request: Request) -> Response:
    """``GET /api/v1/messages/{id}/checks``: the dev checks."""
    _, _, parsed = await _parsed(request)
    return JSONResponse(checks_json(await asyncio.to_thread(check_message, parsed)))


async def delete_message(request: Request) -> Response:
    """``DELETE /api/v1/messages/{id}``."""
    entry = _entry(request)
    removed = await _index(request).delete([entry.id])
    return JSONResponse({"deleted": removed})


async def delete_messages(request: Request) -> Response:
    """``DELETE /api/v1/messages``: all, or ``{"ids": [...]}``."""
    index = _index(request)
    await index.ready()
    if not await request.body():
        return JSONResponse({"deleted": await index.delete_all()})
    body = await json_body(request)
    ids = body.get("ids")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ApiError(
            400,
            'the body must be {"ids": ["id", ...]}',
            "send no body to delete every message",
        )
    unknown = [i for i in ids if index.get(i) is None]
    removed = await index.delete(ids)
    return JSONResponse({"deleted": removed, "unknown": unknown[:100]})


async def wait_message(request: Request) -> Response:
    """``GET /api/v1/messages/wait?to=&from=&subject=&since=&timeout=``: the newest
    message matching (substrings, any case; arrived at or after ``since``), waiting up
    to ``timeout`` seconds for one."""
    index = _index(request)
    params = request.query_params
    to = params.get("to", "").lower()
    sender = params.get("from", "").lower()
    subject = params.get("subject", "").lower()
    raw_timeout = params.get("timeout", "30")
    try:
        timeout = float(raw_timeout)
    except ValueError:
        raise ApiError(400, f"?timeout= must be seconds, not {raw_timeout[:20]!r}") from None
    timeout = max(0.0, min(MAX_WAIT, timeout))
    since = _since(params.get("since"))

    def match(entry: MessageEntry) -> bool:
        if entry.time < since:
            return False
        s = entry.summary
        rcpts = " ".join((*s.to, *s.cc, s.envelope.rcpt_to or "", entry.folder)).lower()
        froms = f"{s.sender} {s.envelope.mail_from or ''}".lower()
        return to in rcpts and sender in froms and subject in s.subject.lower()

    entry = await index.wait_for(match, timeout)
    if entry is None:
        raise ApiError(
            404,
            f"no message matching arrived within {timeout:g} s",
            "check the sender's settings (port, recipient) and the log; raise ?timeout=",
        )
    return JSONResponse(summary_json(entry))


def _since(value: str | None) -> float:
    """``?since=``: epoch seconds or an ISO 8601 time (naive: UTC); none: 0."""
    if not value:
        return 0.0
    try:
        return float(value)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(
            400,
            f"?since= must be epoch seconds or an ISO 8601 time, not {value[:40]!r}",
            "e.g. ?since=2026-12-04T14:00:00Z or ?since=1796400000",
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


async def release_message(request: Request) -> Response:
    """``POST /api/v1/messages/{id}/release`` ``{"to": [...], "from": optional}``."""
    ctx = context(request)
    entry = _entry(request)
    body = await json_body(request)
    if not ctx.server.settings.relays:
        raise ApiError(
            409,
            "no relay is configured, so there is nowhere to release the message to",
            "add a RelayServer to the config (docs/configuration.md) and reload",
        )
    try:
        recipients = parse_recipients(body.get("to"))
        sender = body.get("from")
        if sender is not None and not isinstance(sender, str):
            raise ReleaseError("from must be an address")
        if sender:
            sender = parse_recipients([sender])[0]
    except ReleaseError as exc:
        raise ApiError(400, str(exc)) from None
    raw = await _raw(request, entry)
    try:
        queue_id = await release(ctx.server.store, raw, recipients, mail_from=sender or None)
    except SpoolError as exc:
        raise ApiError(503, f"could not queue the message: {exc}") from None
    return JSONResponse({"queued": queue_id, "to": recipients}, status_code=202)


async def get_chaos(request: Request) -> Response:
    """``GET /api/v1/chaos``."""
    return JSONResponse(chaos_json(context(request)))


async def put_chaos(request: Request) -> Response:
    """``PUT /api/v1/chaos`` ``{"rules": {"MAIL": {"code": 451, "probability": 10}}}``."""
    ctx = context(request)
    body = await json_body(request)
    given = body.get("rules", {})
    if not isinstance(given, dict):
        raise ApiError(
            400, 'rules must be an object, e.g. {"RCPT": {"code": 452, "probability": 50}}'
        )
    rules: dict[str, ChaosRule] = {}
    for stage, value in given.items():
        if stage not in STAGES:
            raise ApiError(400, f"unknown stage {str(stage)[:20]!r}", f"use {', '.join(STAGES)}")
        if value is None:
            continue
        if not isinstance(value, dict):
            raise ApiError(400, f'{stage}: give {{"code": 451, "probability": 10}} or null')
        code, probability = value.get("code"), value.get("probability", 0)
        if not isinstance(code, int) or not isinstance(probability, int | float):
            raise ApiError(400, f"{stage}: code must be a number and probability a percentage")
        try:
            rules[stage] = ChaosRule(code, float(probability))
        except ValueError as exc:
            raise ApiError(400, f"{stage}: {exc}") from None
    ctx.server.chaos.configure(rules)
    return JSONResponse(chaos_json(ctx))


# -- pages ---------------------------------------------------------------------------------


async def inbox_page(request: Request) -> Response:
    """``/inbox``: the list, with search, paging, delete and the chaos settings."""
    ctx = context(request)
    index = ctx.server.inbox
    query = request.query_params.get("q", "")[:500]
    start = _int_param(request, "start", 0, 0, 10**9)
    if index is None:
        return page(request, "inbox.html", {"unavailable": True}, active="inbox")
    await index.ready()
    result = await index.page(start, PAGE_SIZE, query)
    return page(
        request,
        "inbox.html",
        {
            "unavailable": False,
            "messages": [summary_json(m) for m in result.messages],
            "total": result.total,
            "start": start,
            "end": start + len(result.messages),
            "page_size": PAGE_SIZE,
            "query": query,
            "prev_start": max(0, start - PAGE_SIZE) if start > 0 else None,
            "next_start": start + PAGE_SIZE if start + PAGE_SIZE < result.total else None,
            "mailbox": ctx.server.settings.paths.mailbox,
            "smtp_port": next((a.port for a in ctx.server.addresses if not a.implicit_tls), None),
            "chaos": chaos_json(ctx),
        },
        active="inbox",
    )


async def message_page(request: Request) -> Response:
    """``/inbox/{id}``: one message with its tabs."""
    ctx = context(request)
    entry, raw, parsed = await _parsed(request)
    report = await asyncio.to_thread(check_message, parsed)
    return page(
        request,
        "message.html",
        {
            "m": message_json(entry, parsed),
            "raw": raw[:RAW_SHOWN].decode("utf-8", "replace"),
            "raw_cut": len(raw) > RAW_SHOWN,
            "checks": checks_json(report),
            "relays": [r.display_name for r in ctx.server.settings.relays],
            "remote_images": sum(
                1 for i in report.images if i.src.lower().startswith(("http:", "https:", "//"))
            ),
        },
        active="inbox",
    )


def _frame_html(raw: bytes, parsed: ParsedMessage) -> str:
    """The HTML body with ``cid:`` images put inline as data: URLs.

    Inline, not links to the attachment API: the sandboxed frame has an opaque origin,
    so its requests carry no console cookie (with console users they would be refused).
    """
    body = parsed.html or ""
    if "cid:" not in body.lower():
        return '<base target="_blank">' + body
    images: dict[str, str] = {}
    for part in attachment_parts(parse_raw(raw)):
        content_id = str(part.get("content-id", "")).strip().strip("<>")
        payload = part.get_payload(decode=True)
        if (
            content_id
            and part.get_content_maintype() == "image"
            and isinstance(payload, bytes)
            and len(payload) <= _INLINE_IMAGE_LIMIT
        ):
            encoded = base64.b64encode(payload).decode("ascii")
            images[content_id] = f"data:{part.get_content_type()};base64,{encoded}"

    def cid(match: re.Match[str]) -> str:
        url = images.get(match[2])
        return match[0] if url is None else f"{match[1]}{url}"

    return '<base target="_blank">' + _CID.sub(cid, body)


async def message_html(request: Request) -> Response:
    """``/inbox/{id}/html``: the HTML body for the sandboxed iframe (see the module)."""
    _, raw, parsed = await _parsed(request)
    if parsed.html is None:
        text = html.escape(parsed.text or "(this message has no HTML part)")
        content = f'<pre style="white-space:pre-wrap;font:14px monospace">{text}</pre>'
    else:
        content = await asyncio.to_thread(_frame_html, raw, parsed)
    remote = request.query_params.get("remote") == "1"
    return Response(
        content,
        media_type="text/html; charset=utf-8",
        headers={"Content-Security-Policy": _FRAME_CSP_REMOTE if remote else _FRAME_CSP},
    )


routes: list[BaseRoute] = [
    Route("/inbox", inbox_page, methods=["GET"]),
    Route("/inbox/{id}", message_page, methods=["GET"]),
    Route("/inbox/{id}/html", message_html, methods=["GET"]),
    Route("/api/v1/messages", list_messages, methods=["GET"]),
    Route("/api/v1/messages", delete_messages, methods=["DELETE"]),
    Route("/api/v1/messages/wait", wait_message, methods=["GET"]),
    Route("/api/v1/messages/{id}", get_message, methods=["GET"]),
    Route("/api/v1/messages/{id}", delete_message, methods=["DELETE"]),
    Route("/api/v1/messages/{id}/raw", get_raw, methods=["GET"]),
    Route("/api/v1/messages/{id}/checks", get_checks, methods=["GET"]),
    Route("/api/v1/messages/{id}/attachments/{n}", get_attachment, methods=["GET"]),
    Route("/api/v1/messages/{id}/release", release_message, methods=["POST"]),
    Route("/api/v1/chaos", get_chaos, methods=["GET"]),
    Route("/api/v1/chaos", put_chaos, methods=["PUT"]),
]
