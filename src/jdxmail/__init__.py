"""jdxmail: a local SMTP relay and SMTP diagnostics toolkit."""

from __future__ import annotations

__version__ = "0.1.0"
