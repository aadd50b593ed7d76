"""Finding, reading and validating config files (JSON with comments, or TOML).

Lookup order: ``--config PATH``, ``$JDXMAIL_CONFIG``, ``./appsettings.json``,
``./jdxmail.toml``, then the built-in default. The same sections are accepted at the
top level or under a ``"Jdx"`` object (the JumboDogX layout); keys match
case-insensitively, as .NET's configuration binder does.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import json
import os
import re
import stat
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pydantic
from pydantic import BaseModel

from jdxmail.findings import Finding, KeyPath, Severity, format_path, has_errors
from jdxmail.settings import jsonc, tomlfile
from jdxmail.settings.model import DEFAULT_CONFIG_TEXT, Settings, section_aliases

__all__ = [
    "CONFIG_ENV",
    "ConfigError",
    "ConfigFileError",
    "ConfigInvalidError",
    "ConfigParseError",
    "ConfigSource",
    "LoadedConfig",
    "apply_environment",
    "builtin_source",
    "find_config",
    "inspect_source",
    "load_settings",
    "override_origins",
    "read_source",
    "source_from_text",
    "value_origins",
]

CONFIG_ENV = "JDXMAIL_CONFIG"
#: ``JDXMAIL_Section__Key__0__Key=value`` overrides a key of the file (.NET's convention)
OVERRIDE_PREFIX = "JDXMAIL_"
DEFAULT_NAMES = ("appsettings.json", "jdxmail.toml")
_SECRET_KEYS = {"password"}
_MAX_CONFIG_BYTES = 4 * 1024 * 1024

Format = Literal["json", "toml", "builtin"]


class ConfigError(Exception):
    """Base of every config problem; ``str()`` is a message fit for users."""


class ConfigFileError(ConfigError, OSError):
    """The config file cannot be found or read."""

    def __init__(self, path: Path, reason: str, fix: str = "") -> None:
        super().__init__(f"cannot read config file {path}: {reason}")
        self.path = path
        self.reason = reason
        self.fix = fix


class ConfigParseError(ConfigError, ValueError):
    """The config file is not valid JSON/TOML; carries the 1-based line and column."""

    def __init__(self, path: Path, reason: str, line: int, column: int) -> None:
        super().__init__(f"{path}:{line}:{column}: {reason}")
        self.path = path
        self.reason = reason
        self.line = line
        self.column = column


class ConfigInvalidError(ConfigError, ValueError):
    """The config file parses but its keys or values are wrong; holds the findings."""

    def __init__(self, source: ConfigSource, findings: list[Finding]) -> None:
        errors = [f for f in findings if f.severity is Severity.ERROR]
        first = errors[0] if errors else findings[0]
        where = f"{first.key}: " if first.key else ""
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        super().__init__(f"{source.name}: {where}{first.message}{more}")
        self.source = source
        self.findings = findings


@dataclass(frozen=True)
class ConfigSource:
    """A config document as read: where from, its format, its text and parsed data."""

    path: Path | None
    format: Format
    text: str
    data: Mapping[str, Any]
    #: ``("Jdx",)`` when the sections sit under a top-level Jdx object
    prefix: KeyPath = ()
    _lines: dict[KeyPath, int] = field(default_factory=dict, repr=False, compare=False)
    #: keys set from the environment (their path as the variable spells it) -> variable
    overrides: Mapping[KeyPath, str] = field(default_factory=dict, compare=False)
    #: for each overridden path, the line of the file it replaces (None: a new key)
    replaced_lines: Mapping[KeyPath, int | None] = field(default_factory=dict, compare=False)
    #: problems with override variables found while applying them
    override_findings: tuple[Finding, ...] = field(default=(), compare=False)

    @property
    def name(self) -> str:
        """The file path as text, or ``built-in defaults``."""
        return str(self.path) if self.path is not None else "built-in defaults"

    @property
    def base_dir(self) -> Path:
        """The folder relative paths in the config are resolved under."""
        return self.path.parent.resolve() if self.path is not None else Path.cwd()

    @functools.cached_property
    def _json_root(self) -> jsonc.Node:
        return jsonc.parse(self.text)

    def line_of(self, path: KeyPath) -> int | None:
        """The line where *path* (below the prefix) or its nearest ancestor is written.

        None for the empty path (the whole file) and for the built-in defaults.
        """
        if not path or self.path is None or self.variable_of(path):
            return None
        full = (*self.prefix, *path)
        if self.format == "toml":
            lowered = tuple(p.lower() if isinstance(p, str) else p for p in full)
            for depth in range(len(lowered), 0, -1):
                line = self._lines.get(lowered[:depth])
                if line is not None:
                    return line
            return None
        root = self._json_root
        for depth in range(len(full), -1, -1):
            node, offset = jsonc.find(root, full[:depth])
            if node is not None and offset is not None:
                return jsonc.line_col(self.text, offset)[0]
        return None

    def variable_of(self, path: KeyPath) -> str | None:
        """The environment variable that set *path* (below the prefix) or an ancestor."""
        wanted = _folded(path)
        for key, name in self.overrides.items():
            if wanted[: len(key)] == _folded(key):
                return name
        return None


def _folded(path: KeyPath) -> KeyPath:
    return tuple(p.casefold() if isinstance(p, str) else p for p in path)


@dataclass(frozen=True)
class LoadedConfig:
    """Valid settings and the source they came from, with non-error findings."""

    source: ConfigSource
    settings: Settings
    findings: list[Finding]


def find_config(
    explicit: Path | None = None,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Path | None:
    """The config file to use, by the lookup order; None means the built-in default.

    A path given with ``--config`` or ``$JDXMAIL_CONFIG`` is returned even when it does
    not exist, so that reading it reports the problem.
    """
    env = os.environ if environ is None else environ
    if explicit is not None:
        return explicit
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV])
    folder = cwd if cwd is not None else Path.cwd()
    for name in DEFAULT_NAMES:
        candidate = folder / name
        # anything there but a folder is the config (a FIFO is then refused, not skipped)
        if candidate.exists() and not candidate.is_dir():
            # found in the working folder: named as the user would ("appsettings.json")
            return candidate if cwd is not None else Path(name)
        # (a relative path: every reader resolves it once, see ConfigSource.base_dir)
    return None


def builtin_source() -> ConfigSource:
    """The built-in default config as a source (a dev inbox on 127.0.0.1:2525)."""
    return source_from_text(None, DEFAULT_CONFIG_TEXT, "builtin")


def _file_kind(mode: int) -> str:
    """What a non-regular file is, for messages ("a FIFO", "a character device"…)."""
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def _missing_fix(path: Path) -> str:
    """The fix for a config path that does not exist, naming where the path came from."""
    named = os.environ.get(CONFIG_ENV)
    if named and Path(named) == path:
        return (
            f"check the path in ${CONFIG_ENV}, or unset it (`unset {CONFIG_ENV}`) for "
            "./appsettings.json or the defaults"
        )
    return "check the path, or run without --config for the defaults"


def read_source(path: Path) -> ConfigSource:
    """Read and parse *path*; raise ConfigFileError or ConfigParseError.

    Only a regular file is read: a FIFO, device or socket is refused before any read
    (reading one could block forever or never end).
    """
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; fstat then refuses it
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            info = os.fstat(fd)
            if stat.S_ISDIR(info.st_mode):
                raise ConfigFileError(path, "it is a directory", "name the file, not its folder")
            if not stat.S_ISREG(info.st_mode):
                raise ConfigFileError(
                    path,
                    f"it is {_file_kind(info.st_mode)}, not a regular file",
                    "point --config or $JDXMAIL_CONFIG at the config file itself",
                )
            if info.st_size > _MAX_CONFIG_BYTES:
                raise ConfigFileError(
                    path, f"it is {info.st_size} bytes, too large for a config file"
                )
            os.set_blocking(fd, True)
            with os.fdopen(fd, "rb") as handle:
                fd = -1
                raw = handle.read(_MAX_CONFIG_BYTES + 1)
        finally:
            if fd >= 0:
                os.close(fd)
    except ConfigFileError:
        raise
    except FileNotFoundError:
        raise ConfigFileError(path, "no such file", _missing_fix(path)) from None
    except IsADirectoryError:
        raise ConfigFileError(path, "it is a directory", "name the file, not its folder") from None
    except PermissionError:
        raise ConfigFileError(
            path,
            "permission denied",
            f"give this user read access, e.g. `chmod u+r {path}`, or run as its owner",
        ) from None
    except OSError as exc:
        raise ConfigFileError(path, exc.strerror or str(exc)) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigParseError(path, "the file is not UTF-8 text", line, column) from None
    return source_from_text(path, text)


def source_from_text(path: Path | None, text: str, fmt: Format | None = None) -> ConfigSource:
    """Parse *text* as the config file *path* would be (format by suffix unless given);
    raise ConfigParseError."""
    if fmt is None:
        fmt = "toml" if path is not None and path.suffix.lower() == ".toml" else "json"
    shown = path if path is not None else Path("<built-in>")
    lines: dict[KeyPath, int] = {}
    data: Any
    if fmt == "toml":
        try:
            data = tomlfile.parse(text).unwrap()
        except tomlfile.TomlError as exc:
            raise ConfigParseError(shown, exc.reason, exc.line, exc.column) from None
        lines = dict(tomlfile.key_lines(text))
    else:
        try:
            data = jsonc.to_python(jsonc.parse(text))
        except jsonc.JsoncError as exc:
            raise ConfigParseError(shown, exc.reason, exc.line, exc.column) from None
        if not isinstance(data, dict):
            raise ConfigParseError(shown, "the top level must be an object { … }", 1, 1)
    prefix: KeyPath = ()
    for key, value in data.items():
        if key.casefold() == "jdx" and isinstance(value, dict):
            prefix, data = (key,), value
            break
    return ConfigSource(path, fmt, text, data, prefix, lines)


def apply_environment(
    source: ConfigSource, environ: Mapping[str, str] | None = None
) -> ConfigSource:
    """*source* with the ``JDXMAIL_Section__Key=value`` variables of *environ* applied.

    ``__`` separates keys, a number is a list index (one past the end appends), keys
    match case-insensitively. A text key takes the value as it is; any other key takes
    it as JSON (``2526``, ``true``, ``["10.0.0.0/8"]``), validated like the file. Only
    variables holding ``__`` are overrides: ``JDXMAIL_CONFIG`` and
    ``JDXMAIL_RELAY_PASSWORD*`` keep their own meaning. Problems become findings that
    name the variable (see ConfigSource.override_findings).
    """
    env = os.environ if environ is None else environ
    data: dict[str, Any] = copy.deepcopy(dict(source.data))
    overrides: dict[KeyPath, str] = {}
    replaced: dict[KeyPath, int | None] = {}
    problems: list[Finding] = []
    for name in sorted(env):
        if not name.startswith(OVERRIDE_PREFIX) or "__" not in name:
            continue
        parts = name[len(OVERRIDE_PREFIX) :].split("__")
        path: KeyPath = tuple(int(p) if p.isdigit() else p for p in parts)
        problem = "" if all(parts) else "an empty key between two __"
        if not problem and _annotation_at(path[:1]) is None:
            problem = f"there is no section {parts[0]!r}"
        value: Any = env[name]
        if not problem and not _takes_text(_annotation_at(path)):
            try:
                value = json.loads(value)
            except ValueError:
                problem = f"the value is not JSON, which this key needs; got {env[name]!r}"
        problem = problem or _set_path(data, path, value)
        if problem:
            problems.append(
                Finding(
                    Severity.ERROR,
                    "env.invalid",
                    f"{name}: {problem}",
                    fix="write JDXMAIL_Section__Key=value, e.g. JDXMAIL_SmtpServer__Port=2526"
                    " (a list item: JDXMAIL_RelayServers__0__Host=smtp.example.com)",
                    path=tuple(p for p in path if p != ""),
                )
            )
            continue
        overrides[path] = name
        replaced[path] = source.line_of(path) if _in_file(source, path) else None
    return dataclasses.replace(
        source,
        data=data,
        overrides=overrides,
        replaced_lines=replaced,
        override_findings=tuple(problems),
    )


def override_origins(source: ConfigSource) -> list[dict[str, Any]]:
    """Where each key set from the environment came from: key, variable, file line.

    ``file_line`` is the line of the file the variable replaces (None: a new key).
    """
    return [
        {
            "key": format_path(path),
            "variable": name,
            "file_line": source.replaced_lines.get(path),
        }
        for path, name in source.overrides.items()
    ]


def value_origins(source: ConfigSource, settings: Settings) -> list[dict[str, Any]]:
    """Every effective value of *settings* with where it came from.

    One entry per leaf key (list items by index): ``key``, ``value`` as JSON (secrets as
    ``**********``), ``origin`` — ``file`` (with ``line``), ``environment`` (with
    ``variable``) or ``default``.
    """
    variables = {_folded(path): name for path, name in source.overrides.items()}
    out: list[dict[str, Any]] = []

    def walk(node: Any, path: KeyPath) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(value, (*path, key))
            return
        if isinstance(node, list) and node:
            for index, value in enumerate(node):
                walk(value, (*path, index))
            return
        entry: dict[str, Any] = {"key": format_path(path), "value": node}
        variable = _variable_for(variables, _folded(path))
        if variable is not None:
            entry.update(origin="environment", variable=variable)
        elif _in_file(source, path):
            entry.update(origin="file", line=source.line_of(path))
        else:
            entry["origin"] = "default"
        out.append(entry)

    walk(settings.model_dump(mode="json", by_alias=True), ())
    return out


def _variable_for(variables: Mapping[KeyPath, str], path: KeyPath) -> str | None:
    """The variable that set *path*, or one of its ancestors (a whole list or section)."""
    for depth in range(len(path), 0, -1):
        variable = variables.get(path[:depth])
        if variable is not None:
            return variable
    return None


def _in_file(source: ConfigSource, path: KeyPath) -> bool:
    """Whether the file itself has a value at *path*."""
    if source.path is None:
        return False
    node: Any = source.data
    for part in path:
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                return False
            node = node[part]
        else:
            if not isinstance(node, dict):
                return False
            key = next((k for k in node if k.casefold() == part.casefold()), None)
            if key is None:
                return False
            node = node[key]
    return True


def _annotation_at(path: KeyPath) -> Any:
    """The settings annotation of the key at *path*; None when there is no such key."""
    annotation: Any = Settings
    for part in path:
        inner, is_list = nested_model(annotation)
        if isinstance(part, int):
            if not is_list:
                return None
            annotation = inner
            continue
        if inner is None or is_list:
            return None
        known = section_aliases(inner).get(part.casefold())
        if known is None:
            return None
        annotation = known[1]
    return annotation


def _takes_text(annotation: Any) -> bool:
    """Whether a key of *annotation* is written as plain text (str, path, secret, choice)."""
    if annotation is None:
        return True
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _takes_text(typing.get_args(annotation)[0])
    if origin is typing.Literal:
        return all(isinstance(a, str) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return all(_takes_text(a) for a in args)
    return isinstance(annotation, type) and issubclass(annotation, str | Path | pydantic.SecretStr)


def _set_path(data: dict[str, Any], path: KeyPath, value: Any) -> str:
    """Set *path* in *data*, making missing objects and lists; a problem text or ""."""
    node: Any = data
    for depth, part in enumerate(path):
        last = depth == len(path) - 1
        fresh: Any = None if last else ([] if isinstance(path[depth + 1], int) else {})
        if isinstance(part, int):
            if not isinstance(node, list):
                return f"{format_path(path[:depth])} is not a list, so it has no item {part}"
            if part > len(node):
                return f"item {part} would leave a gap: the list has {len(node)} item(s)"
            if part == len(node):
                node.append(fresh)
            if last:
                node[part] = value
            elif node[part] is None:
                node[part] = fresh
            node = node[part]
            continue
        if not isinstance(node, dict):
            return f"{format_path(path[:depth])} is not an object, so it has no key {part!r}"
        key = next((k for k in node if k.casefold() == part.casefold()), part)
        if last:
            node[key] = value
        elif not isinstance(node.get(key), dict | list):
            node[key] = fresh
        node = node[key]
    return ""


def nested_model(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The settings model inside *annotation* and whether it is a list of them."""
    origin = typing.get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    if origin is list:
        inner, _ = nested_model(typing.get_args(annotation)[0])
        return inner, inner is not None
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            inner, is_list = nested_model(arg)
            if inner is not None:
                return inner, is_list
    return None, False


def _json_kind(value: Any) -> str:
    """``null``, ``a number``, ``a list``…: what a JSON value is, in a user's words."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a text"
    return "a list" if isinstance(value, list) else "an object"


def _canonical(
    data: Any,
    model: type[BaseModel],
    path: KeyPath,
    source: ConfigSource,
    findings: list[Finding],
) -> Any:
    """Rename keys to their canonical spelling and report unknown keys."""
    if not isinstance(data, dict):
        return data
    aliases = section_aliases(model)
    out: dict[str, Any] = {}
    ignored: list[str] = []
    for key, value in data.items():
        known = aliases.get(key.casefold())
        if known is None:
            where = (*path, key)
            shown_at = (*source.prefix, *where)
            close = difflib.get_close_matches(
                key.casefold(), list(aliases), n=1, cutoff=0.75 if path else 0.8
            )
            if not path and not close:
                ignored.append(key)
                continue
            hint = f"did you mean {aliases[close[0]][0]!r}?" if close else ""
            allowed = ", ".join(alias for alias, _ in aliases.values())
            findings.append(
                Finding(
                    Severity.ERROR,
                    "schema.unknown-key",
                    f"unknown key {key!r}" + (f"; {hint}" if hint else ""),
                    fix=(
                        f"rename it to {aliases[close[0]][0]!r}"
                        if close
                        else f"remove it; keys allowed here: {allowed}"
                    ),
                    path=shown_at,
                    line=source.line_of(where),
                )
            )
            continue
        alias, annotation = known
        inner, is_list = nested_model(annotation)
        if inner is not None and is_list and isinstance(value, list):
            out[alias] = [
                _canonical(item, inner, (*path, alias, i), source, findings)
                for i, item in enumerate(value)
            ]
        elif inner is not None:
            out[alias] = _canonical(value, inner, (*path, alias), source, findings)
        else:
            out[alias] = value
    wrapper = next((key for key in ignored if key.casefold() == "jdx"), None)
    if wrapper is not None:  # the JumboDogX wrapper, but not an object of sections
        ignored.remove(wrapper)
        findings.append(
            Finding(
                Severity.ERROR,
                "schema.jdx-not-object",
                "Jdx must be an object holding the sections (SmtpServer, RelayServers, …); "
                f"got {_json_kind(data[wrapper])}",
                'write "Jdx": { "SmtpServer": { … } }, or remove Jdx and put the sections '
                "at the top level",
                path=(wrapper,),
                line=source.line_of((wrapper,)),
            )
        )
    if ignored:
        findings.append(
            Finding(
                Severity.INFO,
                "schema.ignored-section",
                "not used by jdxmail, ignored: " + ", ".join(ignored),
                line=source.line_of((ignored[0],)),
            )
        )
    return out


_TYPE_FIXES = {
    "int": "write a whole number without quotes, e.g. 2525",
    "bool": "write true or false, without quotes",
    "string": 'write a text in double quotes, e.g. "value"',
    "list": "write a list in brackets, e.g. [ … ]",
    "dict": "write an object in braces, e.g. { … }",
    "model": "write an object in braces, e.g. { … }",
    "literal": "use one of the values named above",
    "enum": "use one of the values named above",
}


def _as_written(value: Any) -> str:
    """*value* as it is written in the file (``true``, ``"yes"``), not as Python shows it."""
    if isinstance(value, bool | int | float | str) or value is None:
        return json.dumps(value, ensure_ascii=False)
    return repr(value)


#: pydantic's wording for a wrong type, in the words of a config file
_TYPE_WORDS = {
    "model_type": "must be an object in braces",
    "model_attributes_type": "must be an object in braces",
    "dict_type": "must be an object in braces",
    "list_type": "must be a list in brackets",
    "int_type": "must be a whole number",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "string_type": "must be a text in double quotes",
}


def _plain_message(message: str, kind: str) -> str:
    """pydantic's message without its prefixes ("Value error, ") and class names."""
    if kind in _TYPE_WORDS:
        return _TYPE_WORDS[kind]
    message = re.sub(r"\b(?:Value error|Assertion failed), ", "", message)
    message = re.sub(r" or instance of \w+", "", message)
    return re.sub(r"^Input should be\b", "must be", message)


def _describe_error(error: Mapping[str, Any]) -> tuple[str, str]:
    """User-facing message and fix for one pydantic error, never echoing a secret."""
    loc = tuple(error["loc"])
    kind = str(error["type"])
    message = _plain_message(str(error["msg"]), kind)
    key = str(loc[-1]) if loc else ""
    if kind == "missing":
        return f"required key {key!r} is missing", f"add {key!r} here"
    secret = any(isinstance(p, str) and p.casefold() in _SECRET_KEYS for p in loc)
    value = error.get("input")
    shown = _as_written(value)
    visible = not secret and not isinstance(value, dict | list) and value is not None
    if visible and shown not in message:
        message = f"{message}; got {shown}"
    if kind == "string_too_short":
        message = "must not be empty"
    if kind in ("greater_than_equal", "less_than_equal") and key.lower().endswith("port"):
        return message, "use a port number from 1 to 65535 (2525 needs no privilege)"
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        return message, "change the value to fit the range"
    if kind.endswith(("_type", "_parsing")) or kind in ("literal_error", "enum"):
        return message, _TYPE_FIXES.get(kind.split("_", maxsplit=1)[0], "")
    return message, ""


def inspect_source(source: ConfigSource) -> tuple[Settings | None, list[Finding]]:
    """Validate *source* against the settings model.

    Returns the settings (None when there are errors) and the schema findings: unknown
    keys (with a "did you mean"), wrong types, missing keys, values out of range.
    """
    findings: list[Finding] = list(source.override_findings)
    if source.override_findings:
        return None, findings
    data = _canonical(dict(source.data), Settings, (), source, findings)
    settings: Settings | None = None
    try:
        settings = Settings.model_validate(data)
    except pydantic.ValidationError as exc:
        seen: set[tuple[KeyPath, str]] = set()
        for error in exc.errors(include_url=False):
            # pydantic names the members of a union in the location; users know keys only
            loc: KeyPath = tuple(
                p for p in error["loc"] if isinstance(p, int) or not set(p) & set("[(")
            )
            message, fix = _describe_error(error)
            if (loc, message) in seen:
                continue
            seen.add((loc, message))
            findings.append(
                Finding(
                    Severity.ERROR,
                    "schema.missing" if error["type"] == "missing" else "schema.invalid",
                    message,
                    fix=fix,
                    path=(*source.prefix, *loc),
                    line=source.line_of(loc),
                )
            )
    findings = [_name_variable(source, f) for f in findings]
    if has_errors(findings):
        return None, findings
    return settings, findings


def _name_variable(source: ConfigSource, finding: Finding) -> Finding:
    """*finding* saying which environment variable set its key, when one did."""
    variable = source.variable_of(finding.path[len(source.prefix) :]) if finding.path else None
    if variable is None or finding.code.startswith("env."):
        return finding
    return dataclasses.replace(finding, message=f"{variable}: {finding.message}", line=None)


def load_settings(
    explicit: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> LoadedConfig:
    """Find, read and validate the config, with overrides and relay passwords from the
    environment and relative paths resolved.

    Raises ConfigFileError / ConfigParseError (cannot read or parse) and
    ConfigInvalidError (schema errors, with findings).
    """
    path = find_config(explicit, environ)
    source = builtin_source() if path is None else read_source(path)
    return settings_from_source(source, environ)


def settings_from_source(
    source: ConfigSource, environ: Mapping[str, str] | None = None
) -> LoadedConfig:
    """Validate *source* as load_settings does (environment, relative paths).

    Raises ConfigInvalidError (schema errors, with findings).
    """
    source = apply_environment(source, environ)
    settings, findings = inspect_source(source)
    if settings is None:
        raise ConfigInvalidError(source, findings)
    env = dict(os.environ if environ is None else environ)
    settings = settings.with_environment(env).with_base_dir(source.base_dir)
    return LoadedConfig(source, settings, findings)
