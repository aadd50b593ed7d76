"""Log lines for people and for grep: console plus a daily log file.

Every line has the time, the level, a category and the session id::

    2026-11-30 05:12:01.442 INFO  SMTP  [3f9a1c2e] 127.0.0.1:51234 connected

The category is the last part of the logger name: ``jdxmail.smtp`` → ``SMTP``,
``jdxmail.auth`` → ``Auth``, ``jdxmail.queue`` → ``Queue``, ``jdxmail.relay`` →
``Relay``, so ``grep SMTP``, ``grep ERROR`` and ``grep Relay`` work as the guide shows.
The file is ``<Paths.Logs>/jdxmail.log``; at midnight it is renamed to
``jdxmail-YYYYMMDD.log`` and a new one starts.

Messages pass through a masking filter: an ``AUTH <mechanism> <data>`` line and any
value registered with :func:`register_secret` never reach a handler in clear.

With ``Logging.Format: "json"`` each line is one JSON object instead, for log shippers
(:class:`JsonFormatter`): ``time``, ``level``, ``category``, ``session``, ``message``
and ``fields`` (what the call passed with ``extra=``), masked the same way.

A session's lines logged on the event loop are written once per turn of the loop
(:class:`DailyFileHandler`), and the plain calls of jdxmail's loggers skip the
logging module's records (:class:`JdxmailLogger`): the server and the delivery
process each log a line per message.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import logging.handlers
import os
import re
import sys
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

__all__ = [
    "LOG_FILE_NAME",
    "CategoryFormatter",
    "DailyFileHandler",
    "JsonFormatter",
    "LogSetupError",
    "MaskingFilter",
    "SessionLog",
    "category_of",
    "configure_logging",
    "register_secret",
]

LOG_FILE_NAME = "jdxmail.log"
_CATEGORIES = {"smtp": "SMTP", "auth": "Auth", "queue": "Queue", "relay": "Relay"}
_AUTH_LINE = re.compile(r"(?i)\b(AUTH\s+(?:PLAIN|LOGIN|CRAM-MD5|XOAUTH2)\s+)\S+")
_MASK = "********"
_secrets: set[str] = set()
_secrets_lock = threading.Lock()
#: the secrets as one tuple, replaced whole when one is added: read per line, no lock
_secret_values: tuple[str, ...] = ()


class LogSetupError(OSError):
    """The log folder or file cannot be created or opened."""


def category_of(logger_name: str) -> str:
    """The category shown for *logger_name*: SMTP, Auth, Queue, Relay, or its last part."""
    known = _category_cache.get(logger_name)
    if known is None:
        last = logger_name.rsplit(".", 1)[-1]
        known = _CATEGORIES.get(last.lower(), last.capitalize() if last != "root" else "App")
        _category_cache[logger_name] = known  # one entry per logger: a handful
    return known


_category_cache: dict[str, str] = {}


def register_secret(value: str) -> None:
    """Never let *value* (a password, hash or relay secret) appear in a log line."""
    global _secret_values  # noqa: PLW0603
    if len(value) >= 4:
        with _secrets_lock:
            _secrets.add(value)
            _secret_values = tuple(_secrets)


def _mask(text: str) -> str:
    if "auth" in text.lower():  # cheaper than the regular expression on every line
        text = _AUTH_LINE.sub(lambda m: m.group(1) + _MASK, text)
    for secret in _secret_values:
        if secret in text:
            text = text.replace(secret, _MASK)
    return text


class SessionLog(logging.LoggerAdapter[logging.Logger]):
    """A logger's lines for one SMTP session: each record gets ``session``.

    What :class:`logging.LoggerAdapter` does, in two calls instead of six per line
    (the server logs one or more per message): the level check, then the line on the
    direct path (see _Direct) or the logger's record. Every call of the adapter
    behaves as before.
    """

    def __init__(self, logger: logging.Logger, session: str) -> None:
        super().__init__(logger, {"session": session})
        self.session = session

    def debug(self, msg: object, *args: object, **kwargs: Any) -> None:
        """Log *msg* % *args* at DEBUG with this session's id."""
        if self.logger.isEnabledFor(logging.DEBUG):
            self._line(logging.DEBUG, msg, args, kwargs)

    def info(self, msg: object, *args: object, **kwargs: Any) -> None:
        """Log *msg* % *args* at INFO with this session's id."""
        if self.logger.isEnabledFor(logging.INFO):
            self._line(logging.INFO, msg, args, kwargs)

    def warning(self, msg: object, *args: object, **kwargs: Any) -> None:
        """Log *msg* % *args* at WARNING with this session's id."""
        if self.logger.isEnabledFor(logging.WARNING):
            self._line(logging.WARNING, msg, args, kwargs)

    def _line(self, level: int, msg: object, args: tuple[object, ...], kwargs: Any) -> None:
        logger = self.logger
        if kwargs or _direct is None or not _direct.log(logger, level, msg, args, self.session):
            kwargs["extra"] = self.extra
            logger._log(level, msg, args, **kwargs)


class MaskingFilter(logging.Filter):
    """Replace AUTH payloads and registered secrets in the message by ``********``."""

    def filter(self, record: logging.LogRecord) -> bool:
        # Each handler (console, file) runs this filter: mask a record only once. The
        # masked text is kept on the record: the formatters need not build it again.
        if "_jdxmail_text" in record.__dict__:
            return True
        message = record.getMessage()
        masked = _mask(message)
        if masked != message:
            record.msg, record.args = masked, None
        record._jdxmail_text = masked
        return True


def _text(record: logging.LogRecord) -> str:
    """The record's message, as MaskingFilter left it (made again if it did not run)."""
    text: str | None = record.__dict__.get("_jdxmail_text")
    return record.getMessage() if text is None else text


class CategoryFormatter(logging.Formatter):
    """``time level category [session] message``; ``-`` when there is no session."""

    def __init__(self) -> None:
        super().__init__(datefmt="%Y-%m-%d %H:%M:%S")
        self._stamp: tuple[int, str] = (-1, "")
        #: "LEVEL CATEGORY [" by level name and logger name: a handful, made once each
        self._heads: dict[tuple[str, str], str] = {}

    def format(self, record: logging.LogRecord) -> str:
        # The console and the file share this formatter: format each record once.
        cached: tuple[CategoryFormatter, str] | None = getattr(record, "_jdxmail_line", None)
        if cached is not None and cached[0] is self:
            return cached[1]
        line = self.line(*_line_values(record))
        if record.exc_info:
            # One line per record keeps grep useful: the error type and text, no traceback.
            exc = record.exc_info[1]
            line += f" ({type(exc).__name__}: {exc})"
        record._jdxmail_line = (self, line)
        return line

    def line(
        self, created: float, msecs: float, level: str, name: str, session: object, text: str
    ) -> str:
        """The line of a record with these values (text already masked), no exception."""
        second = int(created)
        stamp = self._stamp  # one tuple: safe when handlers in two threads share it
        if stamp[0] != second:
            # strftime once per second, not per line.
            stamp = self._stamp = (
                second,
                time.strftime(self.datefmt or "", self.converter(created)),
            )
        key = (level, name)
        head = self._heads.get(key)
        if head is None:
            head = self._heads[key] = f"{key[0]:<5} {category_of(key[1]):<5} ["
        return f"{stamp[1]}.{int(msecs):03d} {head}{session or '-'}] {text}"


def _line_values(record: logging.LogRecord) -> tuple[float, float, str, str, object, str]:
    """What a formatter's ``line`` takes of *record*: time, level, logger, session, text."""
    return (
        record.created,
        record.msecs,
        record.levelname,
        record.name,
        getattr(record, "session", None),
        _text(record),
    )


#: attributes every LogRecord has: anything else came from ``extra=`` (a field)
_RECORD_ATTRIBUTES = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, category, session, message, fields.

    ``time`` is ISO 8601 with milliseconds and the UTC offset; ``session`` is null
    outside a session; ``fields`` holds the record's ``extra=`` values (text masked
    like the message); an exception adds ``error`` (its type and text, no traceback).
    """

    def __init__(self) -> None:
        super().__init__()
        #: (second, "YYYY-MM-DDTHH:MM:SS", "+HH:MM"): strftime once per second
        self._stamp: tuple[int, str, str] = (-1, "", "")
        #: the level's and category's part of a line, by level name and logger name
        self._heads: dict[tuple[str, str], str] = {}

    def format(self, record: logging.LogRecord) -> str:
        cached: tuple[JsonFormatter, str] | None = getattr(record, "_jdxmail_line", None)
        if cached is not None and cached[0] is self:
            return cached[1]
        fields: dict[str, object] = {}
        for key, value in vars(record).items():
            if key in _RECORD_ATTRIBUTES or key.startswith("_") or key == "session":
                continue
            fields[key] = _mask(value) if isinstance(value, str) else _plain(value)
        data = self._data(*_line_values(record), fields)
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            data["error"] = _mask(f"{type(exc).__name__}: {exc}")
        line = json.dumps(data, ensure_ascii=False, default=str)
        record._jdxmail_line = (self, line)
        return line

    def line(
        self, created: float, msecs: float, level: str, name: str, session: object, text: str
    ) -> str:
        """The line of a record with these values (text already masked), no exception
        and no fields."""
        if session is not None and not isinstance(session, str):
            data = self._data(created, msecs, level, name, session, text, {})
            return json.dumps(data, ensure_ascii=False, default=str)
        # What json.dumps(ensure_ascii=False) makes of that dict, by hand: the strings
        # through the same encoder, the keys in the same order.
        stamp = self._stamp_of(created)
        key = (level, name)
        head = self._heads.get(key)
        if head is None:
            head = self._heads[key] = (
                f'", "level": {_json_text(level)}, "category": {_json_text(category_of(name))}'
            )
        return (
            f'{{"time": "{stamp[1]}.{int(msecs):03d}{stamp[2]}{head}, "session": '
            f'{_json_text(session) if session else "null"}, "message": {_json_text(text)}, '
            '"fields": {}}'
        )

    def _stamp_of(self, created: float) -> tuple[int, str, str]:
        second = int(created)
        stamp = self._stamp  # one tuple: safe when handlers in two threads share it
        if stamp[0] != second:
            local = time.localtime(created)
            offset = time.strftime("%z", local)
            stamp = self._stamp = (
                second,
                time.strftime("%Y-%m-%dT%H:%M:%S", local),
                f"{offset[:3]}:{offset[3:]}",
            )
        return stamp

    def _data(
        self,
        created: float,
        msecs: float,
        level: str,
        name: str,
        session: object,
        text: str,
        fields: dict[str, object],
    ) -> dict[str, object]:
        stamp = self._stamp_of(created)
        return {
            "time": f"{stamp[1]}.{int(msecs):03d}{stamp[2]}",
            "level": level,
            "category": category_of(name),
            "session": session or None,
            "message": text,
            "fields": fields,
        }


#: a str as JSON text, as json.dumps(ensure_ascii=False) writes it
_json_text: Callable[[str], str] = json.encoder.encode_basestring


def _plain(value: object) -> object:
    """*value* if JSON has it (numbers, booleans, None), else its masked text."""
    if value is None or isinstance(value, bool | int | float):
        return value
    return _mask(str(value))


class DailyFileHandler(logging.handlers.TimedRotatingFileHandler):
    """``jdxmail.log``, renamed to ``jdxmail-YYYYMMDD.log`` at midnight (local time).

    With *echo* (the console) each line is written there too, by this one handler:
    a record is then filtered, formatted and locked for once rather than once per
    output (a line logged costs about 40 µs of CPU here, 47 with two handlers).

    A session's lines logged on a running event loop are written once per turn of
    that loop: the turn's lines in one write to the file and one to the echo (the
    server and the delivery process log a line per message, several messages finish
    in one turn). They are written before the loop handles the next events, so a
    client of the same loop reads the reply sent after a line only once the line is
    in the file. Any other line (no session, an ERROR, a thread without a loop: the
    CLI), :meth:`flush` and :meth:`close` (``logging.shutdown`` at exit, and in a
    worker before it ends) and a new second (midnight's rollover) write the waiting
    lines at once, in order.
    """

    def __init__(self, path: Path, *, echo: TextIO | None = None) -> None:
        super().__init__(path, when="midnight", encoding="utf-8", delay=False)
        self.suffix = "%Y%m%d"
        self.namer = self._dated_name
        self.echo = echo
        #: lines logged during this turn of the loop, not yet written
        self._waiting: list[str] = []
        #: the time of the first of them (for the notes about the file)
        self._waiting_since = 0.0
        #: the loop a write of the waiting lines is scheduled on (None: none is)
        self._write_on: asyncio.AbstractEventLoop | None = None
        _file_handlers.add(self)

    def emit(self, record: logging.LogRecord) -> None:
        """Write the line to the file (rolling over first at midnight), then the echo.

        When the file cannot be written (the disk is full, its folder was deleted) the
        line still reaches the echo; that is said once, on the echo, and once more in
        the file when it can be written again (a folder deleted is made again).
        """
        try:
            line = self.format(record) + self.terminator
            self._put(
                line, record.created, _may_wait(record.levelno, getattr(record, "session", None))
            )
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def put(self, line: str, created: float, may_wait: bool) -> None:
        """Write *line* (formatted, with its line end) of a record made at *created*,
        as :meth:`emit` writes a record's (the direct path's entry, see _Direct);
        *may_wait* for the end of the loop's turn (see _may_wait)."""
        lock = self.lock
        assert lock is not None  # (Handler.createLock made it)
        with lock:
            try:
                self._put(line, created, may_wait)
            except RecursionError:
                raise
            except Exception:
                self.handleError(self._record(line.rstrip("\n"), logging.INFO))

    def flush(self) -> None:
        """Write the lines waiting for the end of the loop's turn, then flush."""
        with self.lock:  # type: ignore[union-attr]
            self._write_waiting()
        super().flush()

    def close(self) -> None:
        """Write the waiting lines, then close the file."""
        with self.lock:  # type: ignore[union-attr]
            self._write_waiting()
        super().close()

    #: lines that reached only the echo since the file last failed (None: it works)
    _missed: int | None = None
    #: the second (of a record's time) the file was last checked to exist
    _checked = -1

    def _put(self, line: str, created: float, may_wait: bool) -> None:
        second = int(created)
        if second != self._checked:
            # Once a second: midnight's rollover (it falls on a new second), and a log
            # file deleted under it (with its folder) is made again. The lines of the
            # second before go to the file they belong to first.
            self._write_waiting()
            self._checked = second
            failed = self._check_file()
            if failed is not None:  # this line reaches the echo only
                self._waiting_since = created
                self._file_failed(failed, 1)
                self._write_echo(line)
                return
        waiting = self._waiting
        if not waiting:
            self._waiting_since = created
        waiting.append(line)
        loop = _running_loop() if may_wait else None
        if loop is None:
            self._write_waiting()
        elif self._write_on is not loop:
            self._write_on = loop
            loop.call_soon(self._end_of_turn)

    def _end_of_turn(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write_on = None
            self._write_waiting()

    def _check_file(self) -> OSError | None:
        """Roll over at midnight, notice a deleted file; the error when that failed."""
        try:
            if self.shouldRollover(None):  # type: ignore[arg-type]  # (not used)
                self.doRollover()
            if self.stream is not None and not os.path.exists(self.baseFilename):
                with contextlib.suppress(OSError):
                    self.stream.close()
                self.stream = None
        except OSError as exc:
            return exc
        return None

    def _write_waiting(self) -> None:
        """Write the waiting lines: the file, then the echo (even if the file failed)."""
        lines = self._waiting
        if not lines:
            return
        self._waiting = []
        try:
            self._write_lines("".join(lines), len(lines))
        except RecursionError:
            raise
        except Exception:
            # (a line the file's encoding refuses): one at a time, so that only such a
            # line is lost, reported as logging reports a line it cannot write
            for line in lines:
                try:
                    self._write_lines(line, 1)
                except RecursionError:
                    raise
                except Exception:
                    self.handleError(self._record(line.rstrip("\n"), logging.INFO))

    def _write_lines(self, text: str, count: int) -> None:
        try:
            self._write_file(text)
        except OSError as exc:
            self._file_failed(exc, count)
        self._write_echo(text)

    def _write_echo(self, text: str) -> None:
        echo = self.echo
        if echo is not None:
            try:
                echo.write(text)
                echo.flush()
            except RecursionError:
                raise
            except Exception:
                self.handleError(self._record(text.split("\n", 1)[0], logging.INFO))

    def _write_file(self, text: str) -> None:
        stream = self.stream
        if stream is None:  # closed by a failed rollover or write: open it again
            os.makedirs(os.path.dirname(self.baseFilename) or ".", exist_ok=True)
            stream = self.stream = self._open()
        if self._missed is not None:
            stream.write(
                self._note(
                    f"the log file works again; {self._missed} line(s) "
                    "before this one went to the console only",
                )
            )
        stream.write(text)
        stream.flush()
        self._missed = None

    def _file_failed(self, exc: OSError, lines: int) -> None:
        stream, self.stream = self.stream, None
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
        if self._missed is None:
            self._missed = 0
            reason = "the disk is full" if exc.errno == errno.ENOSPC else exc.strerror or exc
            if self.echo is not None:
                self.echo.write(
                    self._note(
                        f"cannot write the log file {self.baseFilename} ({reason}); "
                        "logging to the console only until it can",
                        logging.ERROR,
                    )
                )
        self._missed += lines

    def _record(self, text: str, level: int) -> logging.LogRecord:
        record = logging.LogRecord("jdxmail.logs", level, "", 0, text, None, None)
        record.created = self._waiting_since
        record.msecs = int((record.created - int(record.created)) * 1000) + 0.0
        return record

    def _note(self, text: str, level: int = logging.WARNING) -> str:
        """A line of jdxmail's own about the file, timed as the lines it comes with."""
        return self.format(self._record(text, level)) + self.terminator

    def doRollover(self) -> None:
        """Rename the file at midnight, once even when several processes write it.

        With ``serve --workers`` every worker has this handler on the same file: the
        first past midnight renames it (under a lock on the folder), the others see
        that the name now points to a new file and only reopen it. Lines still
        waiting are written to the file before it is renamed.
        """
        self._write_waiting()
        try:
            import fcntl  # noqa: PLC0415 - POSIX only

            lock = os.open(os.path.dirname(self.baseFilename) or ".", os.O_RDONLY)
        except (ImportError, OSError):
            super().doRollover()
            return
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self._renamed_elsewhere():
                if self.stream is not None:
                    self.stream.close()
                self.stream = self._open()
                self.rolloverAt = self.computeRollover(int(time.time()))
            else:
                super().doRollover()
        finally:
            os.close(lock)

    def _renamed_elsewhere(self) -> bool:
        if self.stream is None:
            return False
        try:
            return os.stat(self.baseFilename).st_ino != os.fstat(self.stream.fileno()).st_ino
        except OSError:
            return False

    @staticmethod
    def _dated_name(default: str) -> str:
        # default is "<dir>/jdxmail.log.YYYYMMDD"
        base, _, day = default.rpartition(".")
        stem = Path(base)
        return str(stem.with_name(f"{stem.stem}-{day}{stem.suffix}"))


def _may_wait(level: int, session: object) -> bool:
    """Whether a line may wait for the end of the loop's turn: a session's lines below
    ERROR (one or more per message or connection). The rest (start, stop, reload,
    errors: what a person or a supervisor waits for) is written at once."""
    return bool(session) and level < logging.ERROR


#: every DailyFileHandler alive: the waiting lines of each are dropped in a forked child
_file_handlers: weakref.WeakSet[DailyFileHandler] = weakref.WeakSet()
_running_loop = asyncio.events._get_running_loop


def _forget_waiting_lines() -> None:
    # A forked child (serve --workers) inherits the parent's waiting lines: the parent
    # writes them, the child must not write them a second time.
    for handler in list(_file_handlers):
        handler._waiting = []
        handler._write_on = None


os.register_at_fork(after_in_child=_forget_waiting_lines)


class _Direct:
    """Where configure_logging sent jdxmail's lines: its root logger and one handler.

    A line of one of jdxmail's loggers that carries nothing but a session takes the
    direct path while nothing else was attached to them (another handler, a filter,
    propagation to Python's root logger, as tests and embedding programs do): its
    text made, masked and formatted by the handler's formatter in one go, without a
    LogRecord, the filters and the handler's dispatch. The line is the one the record
    would give (the formatters make both with the same code).
    """

    def __init__(
        self,
        root: logging.Logger,
        handler: DailyFileHandler,
        formatter: CategoryFormatter | JsonFormatter,
        masking: MaskingFilter,
    ) -> None:
        self.root = root
        self.handler = handler
        self.formatter = formatter
        self.masking = masking

    def log(
        self, logger: logging.Logger, level: int, msg: object, args: Any, session: object
    ) -> bool:
        """Write the line of this call; False (nothing written) when the logging module
        must make it: something else is attached, a level or arguments it treats
        specially, a format error."""
        root, handler = self.root, self.handler
        if logger is not root and (
            logger.parent is not root
            or logger.handlers
            or logger.filters
            or logger.disabled
            or not logger.propagate
        ):
            return False
        roots = root.handlers
        filters = handler.filters
        if (
            len(roots) != 1
            or roots[0] is not handler
            or root.propagate
            or root.filters
            or root.disabled
            or len(filters) != 1
            or filters[0] is not self.masking
            or handler.formatter is not self.formatter
            or level < handler.level
        ):
            return False
        level_name = _LEVEL_NAMES.get(level)
        if level_name is None:
            return False
        try:
            if args:
                if len(args) == 1 and isinstance(args[0], Mapping) and args[0]:
                    return False  # ("%(name)s", {...}): LogRecord's own handling
                text = str(msg) % args
            else:
                text = str(msg)
        except Exception:
            return False  # logging reports the bad call its own way
        created = time.time()
        msecs = int((created - int(created)) * 1000) + 0.0  # as LogRecord has it
        line = self.formatter.line(created, msecs, level_name, logger.name, session, _mask(text))
        handler.put(line + handler.terminator, created, _may_wait(level, session))
        return True


_direct: _Direct | None = None
_LEVEL_NAMES = {
    level: logging.getLevelName(level)
    for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL)
}


class JdxmailLogger(logging.Logger):
    """The logger class of jdxmail's category loggers (``jdxmail.smtp``, ...).

    A call with no exception and no ``extra=`` beyond ``session`` takes the direct
    path of :class:`_Direct` when it can; any other call, or any other setup, goes
    through :class:`logging.Logger` as before.
    """

    def _log(
        self,
        level: int,
        msg: object,
        args: Any,
        exc_info: Any = None,
        extra: Mapping[str, object] | None = None,
        stack_info: bool = False,
        stacklevel: int = 1,
    ) -> None:
        direct = _direct
        if direct is not None and exc_info is None and not stack_info:
            if extra is None:
                if direct.log(self, level, msg, args, None):
                    return
            elif (
                len(extra) == 1
                and "session" in extra
                and direct.log(self, level, msg, args, extra["session"])
            ):
                return
        super()._log(level, msg, args, exc_info, extra, stack_info, stacklevel)


#: the loggers given JdxmailLogger's direct path: jdxmail's categories (made on first use)
_DIRECT_LOGGERS = ("jdxmail", "jdxmail.smtp", "jdxmail.auth", "jdxmail.queue", "jdxmail.relay")


def configure_logging(
    logs_dir: Path | None,
    *,
    level: int = logging.INFO,
    console: TextIO | None = sys.stderr,
    log_format: str = "text",
) -> Path | None:
    """Send jdxmail's log records to the console and to ``logs_dir/jdxmail.log``.

    *log_format* ``"json"`` writes one JSON object per line (JsonFormatter).
    Replaces handlers installed by an earlier call. Returns the log file path (None
    when *logs_dir* is None). Raises LogSetupError when the folder cannot be made.
    """
    # jdxmail's lines name no source file, thread or process: skip collecting them
    # for every record (the Logging HOWTO's "Optimization" section).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger("jdxmail")
    for handler in list(root.handlers):
        if getattr(handler, "_jdxmail", False):
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)
    root.propagate = False
    formatter = JsonFormatter() if log_format == "json" else CategoryFormatter()
    masking = MaskingFilter()
    handlers: list[logging.Handler] = []
    path: Path | None = None
    if logs_dir is not None:
        path = logs_dir / LOG_FILE_NAME
        try:
            logs_dir.mkdir(parents=True, exist_ok=True)
            # one handler writes both the file and the console (see DailyFileHandler)
            handlers.append(DailyFileHandler(path, echo=console))
        except OSError as exc:
            raise LogSetupError(
                f"cannot write the log file {path}: {exc.strerror or exc}"
            ) from None
    elif console is not None:
        handlers.append(logging.StreamHandler(console))
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(masking)
        handler._jdxmail = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    global _direct  # noqa: PLW0603
    _direct = None
    if len(handlers) == 1 and isinstance(handlers[0], DailyFileHandler):
        _direct = _Direct(root, handlers[0], formatter, masking)
        for name in _DIRECT_LOGGERS:
            logger = logging.getLogger(name)
            if type(logger) is logging.Logger:
                # (the modules made them at import: their class is changed in place)
                logger.__class__ = JdxmailLogger
    return path
