"""The inbox pages in a real browser (headless system chromium, driven by Playwright)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import httpx

from tests.web.conftest import Console
from tests.web.test_inbox import mail, send, wait_for

#: set to a folder to keep the screenshots (docs/images/ holds the ones in the docs)
SCREENSHOTS = os.environ.get("JDX_SCREENSHOTS_DIR")


async def loopback_web_server() -> tuple[asyncio.Server, list[str]]:
    """An HTTP server on 127.0.0.1 that records each request path (a 'remote' site)."""
    hits: list[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readline()
        parts = request.split()
        hits.append(parts[1].decode() if len(parts) > 1 else "?")
        while (await reader.readline()).strip():
            pass
        gif = bytes.fromhex(
            "47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002024401003b"
        )
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: image/gif\r\nContent-Length: "
            + str(len(gif)).encode()
            + b"\r\nConnection: close\r\n\r\n"
            + gif
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, hits


async def shot(page: Any, name: str, tmp_path: Path) -> Path:
    """A full-page screenshot in tmp_path (and in $JDX_SCREENSHOTS_DIR when set)."""
    path = tmp_path / name
    await page.screenshot(path=str(path), full_page=True)
    if SCREENSHOTS:
        await asyncio.to_thread(_keep, path, Path(SCREENSHOTS) / name)
    return path


def _keep(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(source.read_bytes())


async def test_live_mail_sandboxed_html_remote_content_delete(
    console: Console, page: Any, tmp_path: Path
) -> None:
    """A new message appears in the open inbox without reload; its HTML shows, but a
    <script> in it does not run and its remote image is not fetched until "Load remote
    content" is clicked; Delete removes it."""
    server, hits = await loopback_web_server()
    port = server.sockets[0].getsockname()[1]
    try:
        await page.goto(console.url + "/inbox")
        await page.wait_for_selector("#jdx-live.on")
        html = (
            '<h2 id="greeting">Welcome aboard</h2>'
            f'<img src="http://127.0.0.1:{port}/remote.gif" alt="tracker">'
            f'<script>new Image().src = "http://127.0.0.1:{port}/script-ran";'
            'document.getElementById("greeting").textContent = "SCRIPT RAN";</script>'
        )
        await send(console, mail("Welcome to the shop", html=html))
        row = page.locator("#messages tbody tr", has_text="Welcome to the shop")
        await row.wait_for(timeout=10_000)
        assert await page.locator("#inbox-total").inner_text() == "1 message"
        assert await page.locator("#page-range").inner_text() == "1\u20131 of 1"
        await row.locator("td.subject a").click()
        await page.wait_for_selector("#html-frame")
        frame = await (await page.query_selector("#html-frame")).content_frame()
        await frame.wait_for_load_state("load")
        assert await frame.locator("#greeting").inner_text() == "Welcome aboard"
        assert hits == []
        await page.click("#load-remote")
        frame = await (await page.query_selector("#html-frame")).content_frame()
        await frame.wait_for_load_state("load")
        for _ in range(200):
            if "/remote.gif" in hits:
                break
            await asyncio.sleep(0.02)
        assert "/remote.gif" in hits
        assert "/script-ran" not in hits
        assert await frame.locator("#greeting").inner_text() == "Welcome aboard"
        await page.click("#delete-message")
        await page.wait_for_url(console.url + "/inbox")
        assert await page.locator("#messages tbody tr").count() == 0
    finally:
        server.close()


async def test_mail_deleted_elsewhere_leaves_the_open_list(
    console: Console, page: Any, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    """With the inbox open, a message deleted by another client (the API) and one whose
    file is removed by hand leave the list without a reload, and the total follows;
    when the last one goes, the page shows the empty inbox as a fresh load does."""
    for subject in ("Order 1", "Order 2", "Order 3"):
        await send(console, mail(subject))
    found = [await wait_for(http, f"Order {n}") for n in (1, 2, 3)]
    await page.goto(console.url + "/inbox")
    await page.wait_for_selector("#jdx-live.on")
    rows = page.locator("#messages tbody tr")
    assert await rows.count() == 3
    deleted = await http.request("DELETE", "/api/v1/messages", json={"ids": [found[0]["id"]]})
    assert deleted.status_code == 200
    await page.locator("#messages tbody tr", has_text="Order 1").wait_for(
        state="detached", timeout=10_000
    )
    assert await page.locator("#inbox-total").inner_text() == "2 messages"
    assert console.app.inbox is not None
    entry = console.app.inbox.get(found[1]["id"])
    assert entry is not None
    await asyncio.to_thread(console.app.inbox.path_of(entry).unlink)
    await page.locator("#messages tbody tr", has_text="Order 2").wait_for(
        state="detached", timeout=10_000
    )
    assert await page.locator("#inbox-total").inner_text() == "1 message"
    assert await rows.count() == 1
    assert await page.locator("#page-range").inner_text() == "1\u20131 of 1"
    await shot(page, "inbox-after-removals.png", tmp_path)
    last = await http.request("DELETE", "/api/v1/messages", json={"ids": [found[2]["id"]]})
    assert last.status_code == 200
    # the emptied page shows the server's empty state, not an empty table
    await page.wait_for_selector("#empty", timeout=10_000)
    assert "No mail yet" in await page.locator("#empty").inner_text()
    assert await page.locator("#inbox-total").inner_text() == "0 messages"
    assert await page.locator("#delete-all").is_disabled()


async def test_screenshots_of_inbox_and_message(
    console: Console, http: httpx.AsyncClient, page: Any, tmp_path: Path
) -> None:
    """With 30 messages the list shows the first page newest first with sizes and
    attachment marks; a message page shows its tabs (screenshots kept for the docs)."""
    senders = ["Shop <orders@shop.example>", "CI <ci@builds.example>", "Ana <ana@team.example>"]
    subjects = [
        "Order #{n} confirmed",
        "Build {n} passed on main",
        "Password reset for account {n}",
        "Weekly report {n}",
        "Invitation: design review {n}",
    ]
    for n in range(30):
        message = mail(
            subjects[n % len(subjects)].format(n=1000 + n),
            to=["dev@localhost", "qa@localhost", "ops@localhost"][n % 3],
            html=f"<h1>Hello {n}</h1><p>Your order is on its way.</p>",
            attachment=b"%PDF-1.4 " + b"x" * (n * 400) if n % 4 == 0 else None,
        )
        message.replace_header("From", senders[n % len(senders)])
        await send(console, message)
    await wait_for(http, "Invitation: design review 1029")  # the last one sent
    await page.goto(console.url + "/inbox")
    rows = page.locator("#messages tbody tr")
    assert await rows.count() == 30
    assert "Order #1025 confirmed" in await rows.nth(4).inner_text()
    await shot(page, "inbox.png", tmp_path)
    html = (
        "<div style='font-family:sans-serif;max-width:560px;margin:auto'>"
        "<h1 style='color:#1f5fbf'>Your order is confirmed</h1>"
        "<p>Thanks for shopping with us. Order <b>#1042</b> ships tomorrow.</p>"
        "<p><a href='https://shop.example/orders/1042'>Track your order</a> · "
        "<a href='http://localhost:3000/account'>Your account</a></p>"
        "<img src='https://cdn.shop.example/logo.png'></div>"
    )
    await send(console, mail("Your order #1042 is confirmed", html=html, attachment=b"%PDF-1.4"))
    found = await wait_for(http, "Your order #1042")
    await page.goto(f"{console.url}/inbox/{found['id']}")
    frame = await (await page.query_selector("#html-frame")).content_frame()
    await frame.wait_for_load_state("load")
    assert await frame.locator("h1").inner_text() == "Your order is confirmed"
    await shot(page, "message.png", tmp_path)
    await page.click("[data-tab=checks]")
    assert await page.locator("[data-panel=checks]").is_visible()
    assert "points at this machine" in await page.locator("[data-panel=checks]").inner_text()
    await shot(page, "message-checks.png", tmp_path)


async def test_chaos_panel_turns_chaos_on_and_off(
    console: Console, http: httpx.AsyncClient, page: Any
) -> None:
    """The Chaos panel of the inbox sets a rule (the server then answers RCPT with 452)
    and turns chaos off again."""
    await page.goto(console.url + "/inbox")
    await page.click("#chaos summary")
    await page.select_option("select[name=code-RCPT]", "452")
    await page.fill("input[name=p-RCPT]", "100")
    await page.click("#chaos-form button[type=submit]")
    await page.wait_for_selector("#chaos-state.on")
    state = (await http.get("/api/v1/chaos")).json()
    assert state["rules"]["RCPT"] == {"code": 452, "probability": 100.0}
    assert console.app.chaos.reply("RCPT") is not None
    await page.click("#chaos-off")
    await page.wait_for_selector("#chaos-state.off")
    assert (await http.get("/api/v1/chaos")).json()["active"] is False
