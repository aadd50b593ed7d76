"""The dev inbox: reading the local mailboxes, checks for app developers, release."""

from __future__ import annotations
