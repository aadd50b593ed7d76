"""The Users, Settings and Backup pages in a real browser (headless chromium): a user
added on the page is listed and can log in, a bad setting shows its finding beside the
field, a restore shows what it kept. Screenshots go to the test's folder (and to
$JDX_SCREENSHOTS when set, for docs/images)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from tests.web.config_helpers import (
    CONFIG_WITH_SECRETS,
    GUIDE_HASH,
    RELAY_SECRET,
    can_login,
    screenshot_dir,
)
from tests.web.conftest import Console, MakeConsole


async def _shot(page: Any, console: Console, name: str, *, full: bool = False) -> Path:
    path = console.tmp / name
    await page.screenshot(path=str(path), full_page=full)
    folder = screenshot_dir()
    if folder is not None:
        shutil.copy(path, folder / name)
    return path


def _errors(page: Any) -> list[str]:
    """Collects the page's console errors (a CSP violation shows there), but not the
    browser's note of the 422 a refused save answers on purpose."""
    errors: list[str] = []

    def seen(msg: Any) -> None:
        if msg.type == "error" and "status of 422" not in msg.text:
            errors.append(msg.text)

    page.on("console", seen)
    return errors


async def test_add_a_user_on_the_users_page(make_console: MakeConsole, page: Any) -> None:
    """A user added with the page's form appears in the table, is in the file and can log in."""
    console = await make_console(CONFIG_WITH_SECRETS)
    errors = _errors(page)
    await page.goto(console.url + "/users")
    await page.fill("#user-name", "web@example.com")
    await page.fill("#user-password", "from the page")
    await page.fill("#user-password2", "from the page")
    await page.select_option("#user-hash", "scrypt")
    await page.click("#user-submit")
    row = page.locator('tr[data-user="web@example.com"]')
    await row.wait_for()
    assert "SCRYPT" in await row.inner_text()
    assert '"UserName": "web@example.com"' in console.config_path.read_text()
    assert await can_login(console.smtp_port, "web@example.com", "from the page")
    content = await page.content()
    assert GUIDE_HASH not in content
    await page.wait_for_selector("#jdx-toasts .toast", state="detached")
    await _shot(page, console, "users.png")
    assert errors == []


async def test_settings_page_shows_a_finding_beside_the_field(
    make_console: MakeConsole, page: Any
) -> None:
    """A port out of range is refused: the finding (key, line, fix) shows at the field."""
    console = await make_console(CONFIG_WITH_SECRETS)
    errors = _errors(page)
    await page.goto(console.url + "/settings")
    content = await page.content()
    assert GUIDE_HASH not in content
    assert RELAY_SECRET not in content
    await page.fill("#f-SmtpServer-MaxRecipients", "50")
    await page.fill("#f-SmtpServer-Port", "70000")
    await page.click("#settings-save")
    finding = page.locator('.field[data-key="SmtpServer.Port"] .finding.error')
    await finding.wait_for()
    text = await finding.inner_text()
    assert "line 5" in text
    assert "65535" in text
    assert "Not saved" in await page.inner_text("#save-box")
    assert console.config_path.read_text() == CONFIG_WITH_SECRETS
    await page.set_viewport_size({"width": 1280, "height": 1000})
    await page.evaluate("window.scrollTo(0, 0)")
    await _shot(page, console, "settings.png")
    await page.fill("#f-SmtpServer-Port", "2525")
    await page.click("#settings-save")
    await page.locator("#save-box.ok").wait_for()
    assert '"MaxRecipients": 50' in console.config_path.read_text()
    assert errors == []


async def test_backup_page_refuses_a_bad_file_then_restores(
    make_console: MakeConsole, page: Any
) -> None:
    """A bad upload shows its findings and replaces nothing; a good one names the copy kept."""
    console = await make_console()
    errors = _errors(page)
    before = console.config_path.read_text()
    await page.goto(console.url + "/backup")
    bad = CONFIG_WITH_SECRETS.replace('"MaxRecipients": 100', '"MaxRecipients": 0')
    await page.set_input_files(
        "#restore-file",
        files=[{"name": "broken.json", "mimeType": "application/json", "buffer": bad.encode()}],
    )
    await page.click("#restore-submit")
    await page.locator("#restore-result.error").wait_for()
    assert "SmtpServer.MaxRecipients" in await page.inner_text("#restore-findings")
    assert console.config_path.read_text() == before
    await page.set_input_files(
        "#restore-file",
        files=[
            {
                "name": "appsettings.json",
                "mimeType": "application/json",
                "buffer": CONFIG_WITH_SECRETS.encode(),
            }
        ],
    )
    await page.click("#restore-submit")
    await page.locator("#restore-result.ok").wait_for()
    assert "appsettings.json.bak-" in await page.inner_text("#restore-result")
    assert console.config_path.read_text() == CONFIG_WITH_SECRETS
    await page.wait_for_selector("#jdx-toasts .toast", state="detached")
    await _shot(page, console, "backup.png", full=True)
    assert errors == []
