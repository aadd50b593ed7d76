"""The package installs and answers --version."""

from __future__ import annotations

import subprocess
import sys

from jdxmail import __version__


def test_python_m_prints_version() -> None:
    """`python -m jdxmail --version` prints the package version."""
    out = subprocess.run(
        [sys.executable, "-m", "jdxmail", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"jdxmail {__version__}"
