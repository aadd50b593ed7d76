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
"""

from __future__ import annotations

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
    (the server logs one or more per message): the level check, then the logger's
    record. Every call of the adapter behaves as before.
    """

    def __init__(self, logger: logging.Logger, session: str) -> None:
        super().__init__(logger, {"session": session})

    def debug(self, msg: object, *args: object, **kwargs: Any) -> None:
        """Log *msg* % *args* at DEBUG with this session's id."""
        if self.logger.isEnabledFor(logging.DEBUG):
            kwargs["extra"] = self.extra
            self.logger._log(logging.DEBUG, msg, args, **kwargs)

    def info(self, msg: object, *args: object, **kwargs: Any) -> None:
        """Log *msg* % *args* at INFO with this session's id."""
        if self.logger.isEnabledFor(logging.INFO):
            kwargs["extra"] = self.extra
            self.logger._log(logging.INFO, msg, args, **kwargs)

    def warning(self, msg: object, *args: object, **kwargs: Any) -> None:
        """Log *msg* % *args* at WARNING with this session's id."""
        if self.logger.isEnabledFor(logging.WARNING):
            kwargs["extra"] = self.extra
            self.logger._log(logging.WARNING, msg, args, **kwargs)


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
        line = self._format(record)
        record._jdxmail_line = (self, line)
        return line

    def _format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        stamp = self._stamp  # one tuple: safe when handlers in two threads share it
        if stamp[0] != second:
            # strftime once per second, not per line.
            stamp = self._stamp = (second, self.formatTime(record, self.datefmt))
        key = (record.levelname, record.name)
        head = self._heads.get(key)
        if head is None:
            head = self._heads[key] = f"{key[0]:<5} {category_of(key[1]):<5} ["
        session = getattr(record, "session", None) or "-"
        line = f"{stamp[1]}.{int(record.msecs):03d} {head}{session}] {_text(record)}"
        if record.exc_info:
            # One line per record keeps grep useful: the error type and text, no traceback.
            exc = record.exc_info[1]
            line += f" ({type(exc).__name__}: {exc})"
        return line


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

    def format(self, record: logging.LogRecord) -> str:
        cached: tuple[JsonFormatter, str] | None = getattr(record, "_jdxmail_line", None)
        if cached is not None and cached[0] is self:
            return cached[1]
        when = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))
        offset = time.strftime("%z", time.localtime(record.created))
        fields: dict[str, object] = {}
        for key, value in vars(record).items():
            if key in _RECORD_ATTRIBUTES or key.startswith("_") or key == "session":
                continue
            fields[key] = _mask(value) if isinstance(value, str) else _plain(value)
        data: dict[str, object] = {
            "time": f"{when}.{int(record.msecs):03d}{offset[:3]}:{offset[3:]}",
            "level": record.levelname,
            "category": category_of(record.name),
            "session": getattr(record, "session", None) or None,
            "message": _text(record),
            "fields": fields,
        }
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            data["error"] = _mask(f"{type(exc).__name__}: {exc}")
        line = json.dumps(data, ensure_ascii=False, default=str)
        record._jdxmail_line = (self, line)
        return line


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
    """

    def __init__(self, path: Path, *, echo: TextIO | None = None) -> None:
        super().__init__(path, when="midnight", encoding="utf-8", delay=False)
        self.suffix = "%Y%m%d"
        self.namer = self._dated_name
        self.echo = echo

    def emit(self, record: logging.LogRecord) -> None:
        """Write the line to the file (rolling over first at midnight), then the echo.

        When the file cannot be written (the disk is full, its folder was deleted) the
        line still reaches the echo; that is said once, on the echo, and once more in
        the file when it can be written again (a folder deleted is made again).
        """
        try:
            line = self.format(record) + self.terminator
            try:
                self._write_file(record, line)
            except OSError as exc:
                self._file_failed(record, exc)
            echo = self.echo
            if echo is not None:
                echo.write(line)
                echo.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    #: lines that reached only the echo since the file last failed (None: it works)
    _missed: int | None = None
    #: the second (of a record's time) the file was last checked to exist
    _checked = -1

    def _write_file(self, record: logging.LogRecord, line: str) -> None:
        second = int(record.created)
        if second != self._checked:
            # Once a second: midnight's rollover (it falls on a new second), and a log
            # file deleted under it (with its folder) is made again.
            self._checked = second
            if self.shouldRollover(record):
                self.doRollover()
            if self.stream is not None and not os.path.exists(self.baseFilename):
                with contextlib.suppress(OSError):
                    self.stream.close()
                self.stream = None
        stream = self.stream
        if stream is None:  # closed by a failed rollover or write: open it again
            os.makedirs(os.path.dirname(self.baseFilename) or ".", exist_ok=True)
            stream = self.stream = self._open()
        if self._missed is not None:
            stream.write(
                self._note(
                    record,
                    f"the log file works again; {self._missed} line(s) "
                    "before this one went to the console only",
                )
            )
        stream.write(line)
        stream.flush()
        self._missed = None

    def _file_failed(self, record: logging.LogRecord, exc: OSError) -> None:
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
                        record,
                        f"cannot write the log file {self.baseFilename} ({reason}); "
                        "logging to the console only until it can",
                        logging.ERROR,
                    )
                )
        self._missed += 1

    def _note(self, record: logging.LogRecord, text: str, level: int = logging.WARNING) -> str:
        note = logging.LogRecord("jdxmail.logs", level, "", 0, text, None, None)
        note.created, note.msecs = record.created, record.msecs
        return self.format(note) + self.terminator

    def doRollover(self) -> None:
        """Rename the file at midnight, once even when several processes write it.

        With ``serve --workers`` every worker has this handler on the same file: the
        first past midnight renames it (under a lock on the folder), the others see
        that the name now points to a new file and only reopen it.
        """
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
    formatter: logging.Formatter = JsonFormatter() if log_format == "json" else CategoryFormatter()
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
    return path
