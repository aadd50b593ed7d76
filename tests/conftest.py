"""Shared fixtures: temporary config files, the CLI runner, TLS certificates."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme
from typer.testing import CliRunner

from jdxmail.cli.app import app

WriteConfig = Callable[..., Path]


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test runs in its own folder, with no config from the environment."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("JDXMAIL_"):
            monkeypatch.delenv(name)


@pytest.fixture
def write_config(tmp_path: Path) -> WriteConfig:
    """Write a config file (text as given) into the test's folder and return its path."""

    def write(text: str, name: str = "appsettings.json", mode: int = 0o600) -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        path.chmod(mode)
        return path

    return write


@pytest.fixture
def runner() -> CliRunner:
    """A Typer CLI runner."""
    return CliRunner()


def invoke(runner: CliRunner, *args: str, input: str | None = None) -> tuple[int, str, str]:
    """Run ``jdxmail ARGS`` in-process and return (exit code, stdout, stderr)."""
    result = runner.invoke(app, list(args), input=input)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    """A throwaway certificate authority for TLS tests."""
    return trustme.CA()


@pytest.fixture(scope="session")
def server_cert(ca: trustme.CA) -> trustme.LeafCert:
    """A certificate for localhost / 127.0.0.1 signed by the test CA."""
    return ca.issue_cert("localhost", "127.0.0.1", "::1")
