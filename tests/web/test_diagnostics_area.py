"""Diagnostics from the console: check-port and test-relay against real loopback servers."""

from __future__ import annotations

import socket
from typing import Any

import httpx

from tests.web.conftest import Console, MakeConsole
from tests.web.shots import screenshot
from tests.web.upstream import Upstream, relay_config


async def test_check_port_sees_the_running_server(
    console: Console, http: httpx.AsyncClient
) -> None:
    """check-port finds the server answering its port, and that the port is taken to bind."""
    answering = (await http.post("/api/v1/diagnostics/check-port", json={})).json()
    assert answering["ok"] is True
    assert answering["status"] == "answering"
    assert answering["port"] == console.smtp_port
    assert answering["probes"][0]["ok"] is True
    assert "220" in answering["probes"][0]["detail"]
    bind = await http.post("/api/v1/diagnostics/check-port", json={"listening": False})
    assert bind.json()["ok"] is False
    assert bind.json()["status"] == "in-use"
    bad = await http.post("/api/v1/diagnostics/check-port", json={"port": 70000})
    assert bad.status_code == 400
    assert "port must be a number" in bad.json()["error"]


async def test_test_relay_walks_a_session_with_the_upstream(make_console: MakeConsole) -> None:
    """test-relay passes every stage with a working upstream and names the failing stage
    and a fix when nothing listens."""
    upstream = await Upstream(mail_reply=None).start()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    try:
        console = await make_console(relay_config(upstream.port))
        async with httpx.AsyncClient(base_url=console.url, timeout=30) as http:
            body = {"relay": "upstream", "mail_from": "a@example.com", "rcpt_to": "b@example.net"}
            result = (await http.post("/api/v1/diagnostics/test-relay", json=body)).json()
            assert result["ok"] is True
            (report,) = result["relays"]
            stages = {s["stage"]: s["ok"] for s in report["stages"]}
            assert stages["banner"] is True
            assert stages["EHLO"] is True
            assert stages["RCPT TO"] is True
            assert all(s["ms"] is not None for s in report["stages"] if s["ok"])
            unknown = await http.post("/api/v1/diagnostics/test-relay", json={"relay": "nope"})
            assert unknown.status_code == 404
            assert "upstream" in unknown.json()["fix"]
        dead = await make_console(relay_config(closed_port, name="dead"))
        async with httpx.AsyncClient(base_url=dead.url, timeout=30) as http:
            result = (await http.post("/api/v1/diagnostics/test-relay", json={})).json()
        assert result["ok"] is False
        assert result["relays"][0]["failed_stage"] == "TCP connect"
        assert any(f["fix"] for f in result["relays"][0]["findings"])
    finally:
        await upstream.close()


async def test_doctor_runs_on_the_console_config(console: Console, http: httpx.AsyncClient) -> None:
    """doctor reads the console's config file and reports it valid."""
    report = (await http.post("/api/v1/diagnostics/doctor")).json()
    assert report["config"] == str(console.config_path)
    config_rows = [row for row in report["rows"] if row["id"] == "config"]
    assert config_rows
    assert config_rows[0]["ok"] is True


async def test_diagnostics_page_shows_staged_results(console: Console, page: Any) -> None:
    """Running check-port from the page shows the ✓ stage with the server's banner."""
    await page.set_viewport_size({"width": 1280, "height": 1000})
    await page.goto(console.url + "/diagnostics")
    await page.click("#form-port button[type=submit]")
    await page.wait_for_selector("#result .verdict.good", timeout=15000)
    text = await page.text_content("#result")
    assert "answering" in (text or "")
    assert "220" in (text or "")
    await screenshot(page, "diagnostics", console.tmp)


async def test_test_relay_refuses_an_address_with_a_line_break(make_console: MakeConsole) -> None:
    """An address with CR/LF (which would smuggle a second SMTP command to the relay)
    is refused with 400 and a fix, before any connection to the relay."""
    upstream = await Upstream(mail_reply=None).start()
    try:
        console = await make_console(relay_config(upstream.port))
        async with httpx.AsyncClient(base_url=console.url, timeout=30) as http:
            for key in ("mail_from", "rcpt_to"):
                body = {"mail_from": "a@example.com", "rcpt_to": "b@example.net"}
                body[key] = "a@example.com>\r\nRCPT TO:<victim@example.org"
                answer = await http.post("/api/v1/diagnostics/test-relay", json=body)
                assert answer.status_code == 400
                assert key in answer.json()["error"]
                assert "control character" in answer.json()["error"]
        assert upstream.connections == 0
    finally:
        await upstream.close()


async def test_relay_password_never_reaches_the_answer(make_console: MakeConsole) -> None:
    """test-relay and doctor with a relay account answer without its password."""
    upstream = await Upstream(mail_reply=None).start()
    secret = "Very-Secret-Relay-Pw-42"
    try:
        extra = {"Username": "app@example.com", "Password": secret}
        console = await make_console(relay_config(upstream.port, relay_extra=extra))
        async with httpx.AsyncClient(base_url=console.url, timeout=30) as http:
            tested = await http.post("/api/v1/diagnostics/test-relay", json={})
            doctor = await http.post("/api/v1/diagnostics/doctor", json={"timeout": 5})
            status = await http.get("/api/v1/status")
        assert tested.status_code == 200
        assert tested.json()["relays"][0]["relay"] == "upstream"
        for answer in (tested, doctor, status):
            assert secret not in answer.text
    finally:
        await upstream.close()
