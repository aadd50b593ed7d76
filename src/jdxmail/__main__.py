"""``python -m jdxmail``: the same as the ``jdxmail`` command."""

from __future__ import annotations

from jdxmail.cli import main

main()
