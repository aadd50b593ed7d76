"""Where page tests put their screenshots: $JDX_SCREENSHOTS (docs/images when making
the docs' pictures), else the test's temporary folder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


async def screenshot(page: Any, name: str, tmp: Path) -> Path:
    """Take a full-page screenshot *name*.png and return its path."""
    folder = Path(os.environ.get("JDX_SCREENSHOTS") or tmp)
    os.makedirs(folder, exist_ok=True)
    path = folder / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path
