"""``jdxmail validate-config``."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from jdxmail.cli.common import ConfigOption, JsonOption, exit_for_config_error
from jdxmail.cli.exitcodes import ExitCode
from jdxmail.cli.render import (
    error_json,
    print_json,
    render_findings,
    render_overrides,
    render_sources,
)
from jdxmail.findings import has_errors, sort_findings

__all__ = ["validate_config"]


def validate_config(
    config: ConfigOption = None,
    json_output: JsonOption = False,
    sources: Annotated[
        bool,
        typer.Option(
            "--sources",
            help="Also list every effective value and where it came from: the file's "
            "line, an environment variable, or the default (secrets masked).",
        ),
    ] = False,
) -> None:
    """Check the config: unknown keys, wrong types, and the setup mistakes of the guide.

    Exit 0 when there are no errors (warnings allowed), 1 on errors, 2 when the file
    cannot be read or parsed.
    """
    from jdxmail.settings.checks import check_settings  # noqa: PLC0415
    from jdxmail.settings.files import (  # noqa: PLC0415
        ConfigError,
        ConfigParseError,
        apply_environment,
        builtin_source,
        find_config,
        inspect_source,
        override_origins,
        read_source,
        value_origins,
    )

    path = find_config(config)
    try:
        source = apply_environment(builtin_source() if path is None else read_source(path))
    except ConfigError as error:
        if not json_output:
            raise exit_for_config_error(error) from None
        fix = getattr(error, "fix", "") or ""
        report: dict[str, Any] = {
            **error_json(str(error), fix, ExitCode.USAGE),
            "config": str(path),
            "valid": False,
        }
        if isinstance(error, ConfigParseError):
            report["line"], report["column"] = error.line, error.column
        print_json(report)
        raise typer.Exit(ExitCode.USAGE) from None
    settings, findings = inspect_source(source)
    if settings is not None:
        resolved = settings.with_environment().with_base_dir(source.base_dir)
        findings += check_settings(resolved, source)
    findings = sort_findings(findings)
    valid = not has_errors(findings)
    overrides = override_origins(source)
    origins = value_origins(source, settings) if sources and settings is not None else None
    if json_output:
        report = {
            "config": source.name,
            "format": source.format,
            "valid": valid,
            "findings": [f.to_json() for f in findings],
            "overrides": overrides,
        }
        if origins is not None:
            report["sources"] = origins
        print_json(report)
    else:
        render_findings(source.name, findings)
        render_overrides(overrides)
        if origins is not None:
            render_sources(origins)
    raise typer.Exit(ExitCode.OK if valid else ExitCode.FAILED)
