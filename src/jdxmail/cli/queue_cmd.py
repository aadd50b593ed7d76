"""``jdxmail queue list|show|flush|retry|delete|failed``: look into and steer the spool.

Works while ``serve`` runs: the spool is the interface, and a message that is being
delivered at that moment is never changed under the delivery engine's feet.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from jdxmail.cli.common import ConfigOption, JsonOption, load_or_exit
from jdxmail.cli.exitcodes import ExitCode
from jdxmail.cli.render import err_console, fail, out_console, print_json

if TYPE_CHECKING:
    from jdxmail.queue.admin import QueueEntry

__all__ = ["app"]

app = typer.Typer(
    help="List, inspect, retry and delete queued mail (works while `serve` runs).",
    no_args_is_help=True,
    rich_markup_mode=None,
)

IdArg = Annotated[
    str, typer.Argument(metavar="ID", help="The queue id, as `jdxmail queue list` shows it.")
]


def _spool(config: Path | None) -> Path:
    return load_or_exit(config).settings.paths.spool


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def _size(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KB"
    return f"{size / 1024 / 1024:.1f} MB"


def _next_try(entry: QueueEntry, now: float) -> str:
    if not entry.next_try or entry.next_try <= now:
        return "now"
    return "in " + _duration(entry.next_try - now)


def _listing(entries: list[QueueEntry], title: str, *, failed: bool) -> None:
    """One block per message, like Postfix's mailq: readable at any terminal width."""
    from rich.text import Text  # noqa: PLC0415

    now = time.time()
    out_console.print(Text(title, style="bold"))
    for entry in entries:
        head = Text()
        head.append(entry.queue_id, style="bold")
        if entry.corrupt:
            head.append(f"  unreadable: {entry.corrupt}", style="red")
            out_console.print(head)
            continue
        head.append(f"  {_size(entry.size)}  age {_duration(entry.age(now))}")
        head.append(f"  tries {entry.attempts}")
        if not failed:
            head.append(f"  next {_next_try(entry, now)}")
        out_console.print(head)
        out_console.print(Text(f"  from <{entry.mail_from}>"))
        replied = False
        for recipient, outcome in entry.outcomes.items():
            if outcome["status"] != ("failed" if failed else "pending"):
                continue
            line = Text(f"    to <{recipient}>")
            if outcome["reply"]:  # this recipient's own reply, never another's
                replied = True
                via = f"{outcome['relay']}: " if outcome["relay"] else ""
                line.append(f"  {via}{outcome['reply']}", style="red" if failed else "yellow")
            out_console.print(line)
        # the message's last reply only when it is about these recipients: a connection
        # error, not the 250 another recipient of the same message got
        if entry.last_reply and not failed and not replied and entry.last_reply[:1] != "2":
            via = f"{entry.relay}: " if entry.relay else ""
            out_console.print(Text(f"  last reply {via}{entry.last_reply}", style="yellow"))
        if entry.waiting_for and not failed:
            out_console.print(Text(f"  waiting: {entry.waiting_for}", style="cyan"))
        out_console.print()


def list_command(config: ConfigOption = None, json: JsonOption = False) -> None:
    """List queued messages: id, sender, recipients, size, age, tries, next try, reply."""
    from jdxmail.queue.admin import list_queue  # noqa: PLC0415

    spool = _spool(config)
    entries = list_queue(spool)
    if json:
        now = time.time()
        print_json([e.to_json(now) for e in entries])
        return
    if not entries:
        out_console.print(f"The queue is empty ({spool}).")
        return
    _listing(entries, f"{len(entries)} queued message(s) in {spool}", failed=False)


def failed_command(config: ConfigOption = None, json: JsonOption = False) -> None:
    """List messages given up on (in failed/), with the reply that decided it."""
    from jdxmail.queue.admin import failed_entries  # noqa: PLC0415

    spool = _spool(config)
    entries = failed_entries(spool)
    if json:
        now = time.time()
        print_json([e.to_json(now) for e in entries])
        return
    if not entries:
        out_console.print(f"No failed messages ({spool / 'failed'}).")
        return
    _listing(entries, f"{len(entries)} failed message(s) in {spool / 'failed'}", failed=True)
    out_console.print("`jdxmail queue retry ID` queues one again; `queue delete ID` drops it.")


def show_command(queue_id: IdArg, config: ConfigOption = None, json: JsonOption = False) -> None:
    """Show one message: envelope, each recipient's outcome, and the message header."""
    from jdxmail.queue.admin import QueueAdminError, show_message  # noqa: PLC0415

    spool = _spool(config)
    try:
        entry, header, failed = show_message(spool, queue_id)
    except QueueAdminError as exc:
        fail(str(exc), "run `jdxmail queue list` (or `queue failed`) for the ids", ExitCode.FAILED)
    now = time.time()
    if json:
        print_json({**entry.to_json(now), "failed": failed, "header": header})
        return
    out_console.print(f"[bold]{entry.queue_id}[/bold]" + ("  (failed)" if failed else ""))
    if entry.corrupt:
        out_console.print(f"  unreadable: {entry.corrupt}")
        return
    out_console.print(f"  from        <{entry.mail_from}>")
    out_console.print(f"  message-id  <{entry.message_id}>")
    out_console.print(f"  size        {_size(entry.size)}, age {_duration(entry.age(now))}")
    out_console.print(f"  attempts    {entry.attempts}")
    if not failed:
        out_console.print(f"  next try    {_next_try(entry, now)}")
    if entry.waiting_for:
        out_console.print(f"  waiting     {entry.waiting_for}")
    out_console.print("  recipients")
    for recipient, outcome in entry.outcomes.items():
        detail = f" {outcome['reply']}" if outcome["reply"] else ""
        relay = f" (via {outcome['relay']})" if outcome["relay"] else ""
        out_console.print(f"    <{recipient}> {outcome['status']}{relay}{detail}", markup=False)
    out_console.print("  header")
    for line in header.splitlines():
        out_console.print(f"    {line}", markup=False, highlight=False)


def flush_command(config: ConfigOption = None) -> None:
    """Retry every queued message now (a running server picks this up within a second)."""
    from jdxmail.queue.admin import flush_queue  # noqa: PLC0415

    spool = _spool(config)
    try:
        done, busy = flush_queue(spool)
    except OSError as exc:
        fail(f"cannot update the spool: {exc}", f"run as the user that owns {spool}")
    message = f"{done} message(s) due now"
    if busy:
        message += f"; {busy} being delivered at this moment"
    out_console.print(message + ".")


def retry_command(queue_id: IdArg, config: ConfigOption = None) -> None:
    """Retry one message now; a failed one goes back into the queue."""
    from jdxmail.queue.admin import QueueAdminError, retry_message  # noqa: PLC0415

    spool = _spool(config)
    try:
        requeued = retry_message(spool, queue_id)
    except QueueAdminError as exc:
        fail(str(exc), "run `jdxmail queue list` (or `queue failed`) for the ids")
    except OSError as exc:
        fail(f"cannot update the spool: {exc}", f"run as the user that owns {spool}")
    if requeued:
        out_console.print(f"{queue_id} is queued again; its failed recipients will be retried.")
    else:
        out_console.print(f"{queue_id} will be retried now.")


def delete_command(
    queue_id: IdArg,
    config: ConfigOption = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
) -> None:
    """Delete a queued or failed message for good (asks first)."""
    from jdxmail.queue.admin import QueueAdminError, delete_message, show_message  # noqa: PLC0415

    spool = _spool(config)
    try:
        entry, _, _ = show_message(spool, queue_id)
    except QueueAdminError as exc:
        fail(str(exc), "run `jdxmail queue list` (or `queue failed`) for the ids")
    if not yes:
        recipients = ", ".join(entry.recipients) or "?"
        if not typer.confirm(
            f"Delete {queue_id} from <{entry.mail_from}> to {recipients}?", default=False
        ):
            err_console.print("Nothing deleted.")
            raise typer.Exit(ExitCode.FAILED)
    try:
        delete_message(spool, queue_id)
    except QueueAdminError as exc:
        fail(str(exc), "try again in a moment")
    out_console.print(f"Deleted {queue_id}.")


app.command("list")(list_command)
app.command("show")(show_command)
app.command("flush")(flush_command)
app.command("retry")(retry_command)
app.command("delete")(delete_command)
app.command("failed")(failed_command)
