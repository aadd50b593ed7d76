"""Shared fixtures: temporary config files, the CLI runner, TLS certificates, event loops."""

from __future__ import annotations

import asyncio
import importlib.util
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
import trustme
from typer.testing import CliRunner

from jdxmail.cli.app import app

WriteConfig = Callable[..., Path]

#: uvloop can be imported (the dev extra installs it; `serve --loop auto` then runs on it)
HAVE_UVLOOP = importlib.util.find_spec("uvloop") is not None


def _uvloop_loop() -> asyncio.AbstractEventLoop:
    if not HAVE_UVLOOP:
        pytest.skip("uvloop is not installed (pip install -e '.[dev]' installs it)")
    import uvloop

    return uvloop.new_event_loop()


#: the event loops a test marked BOTH_LOOPS runs on, once each
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": _uvloop_loop,
}

#: run the marked async test (or module, as ``pytestmark``) on asyncio's loop and again
#: on uvloop's, as ``serve --loop`` may; sync tests in the module are left alone
BOTH_LOOPS = pytest.mark.both_loops


def pytest_configure(config: pytest.Config) -> None:
    """Register the both_loops marker."""
    config.addinivalue_line("markers", "both_loops: run on asyncio's loop and on uvloop's")


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Every async test runs on asyncio's loop; those marked BOTH_LOOPS on uvloop's too."""
    if item.get_closest_marker("both_loops") is not None:
        return LOOPS
    return {"asyncio": asyncio.new_event_loop}


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
