"""The console's defences: each test fails when its defence is taken out."""

from __future__ import annotations

import json
import logging
import re
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trustme
from starlette.routing import Route
from typer.testing import CliRunner

from jdxmail.diagnostics.doctor import run_doctor
from jdxmail.logs import MaskingFilter
from jdxmail.passwords import HashType, hash_password
from jdxmail.settings.files import load_settings
from jdxmail.web.console import ConsoleSetupError
from jdxmail.web.security import CSP, MAX_BODY
from tests.conftest import BOTH_LOOPS, invoke
from tests.web.conftest import Console, MakeConsole

pytestmark = BOTH_LOOPS  # uvicorn on serve's loop, uvloop too (serve --loop)

ADMIN, ADMIN_PASSWORD = "admin", "console-secret-pw"
SMTP_PASSWORD = "smtp-secret-pw"
RELAY_PASSWORD = "relay-secret-pw"
ADMIN_HASH = hash_password(ADMIN_PASSWORD, HashType.SCRYPT)
SMTP_HASH = hash_password(SMTP_PASSWORD)
HIDDEN_TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


def users_config(limit: int = 5, web: dict[str, object] | None = None) -> str:
    """A config with an SMTP user, a relay with a password and a console user."""
    return json.dumps(
        {
            "SmtpServer": {
                "BindAddress": "127.0.0.1",
                "AuthFailureLimit": limit,
                "Users": [{"UserName": "app@example.com", "Password": SMTP_HASH}],
            },
            "RelayServer": {
                "Host": "127.0.0.1",
                "Port": 9,
                "UseTls": False,
                "Username": "relay-user",
                "Password": RELAY_PASSWORD,
            },
            "WebUI": {
                "Users": [{"UserName": ADMIN, "Password": ADMIN_HASH, "HashType": "SCRYPT"}],
                **(web or {}),
            },
        },
        indent=2,
    )


async def login(client: httpx.AsyncClient, password: str = ADMIN_PASSWORD) -> httpx.Response:
    """Load the login page (for its CSRF cookie and token) and post the form."""
    form = await client.get("/login")
    found = HIDDEN_TOKEN.search(form.text)
    assert found, form.text
    return await client.post(
        "/login",
        data={
            "username": ADMIN,
            "password": password,
            "csrf_token": found.group(1),
            "next": "/",
        },
    )


def page_token(text: str) -> str:
    """The CSRF token in a page's meta tag."""
    found = re.search(r'<meta name="csrf-token" content="([^"]+)">', text)
    assert found, text
    return found.group(1)


# -- Host and Origin ----------------------------------------------------------------------


async def test_foreign_host_is_refused(console: Console, http: httpx.AsyncClient) -> None:
    """A request whose Host is another site's name (DNS rebinding) gets 421, not the page."""
    answer = await http.get("/", headers={"Host": "evil.example"})
    assert answer.status_code == 421
    assert "evil.example" in answer.json()["error"]
    assert "Dashboard" not in answer.text
    ok = await http.get("/", headers={"Host": f"localhost:{console.web.context.port}"})  # type: ignore[union-attr]
    assert ok.status_code == 200


async def test_cross_site_post_is_refused(
    area_console: Console, area_http: httpx.AsyncClient
) -> None:
    """A POST carrying a foreign Origin is refused even with a valid token and cookie."""
    token = page_token((await area_http.get("/")).text)
    answer = await area_http.post(
        "/test/form", headers={"Origin": "http://evil.example", "X-CSRF-Token": token}
    )
    assert answer.status_code == 403
    assert "cross-site" in answer.json()["error"]


async def test_own_origin_with_token_is_accepted(
    area_console: Console, area_http: httpx.AsyncClient
) -> None:
    """The console's own pages (own Origin, token from the page) may POST."""
    token = page_token((await area_http.get("/")).text)
    answer = await area_http.post(
        "/test/form", headers={"Origin": area_console.url, "X-CSRF-Token": token}
    )
    assert answer.status_code == 200
    assert answer.text == "done"


# -- CSRF -----------------------------------------------------------------------------------


async def test_browser_post_without_csrf_token_is_refused(
    area_console: Console, area_http: httpx.AsyncClient
) -> None:
    """A browser POST (it sends Origin) without the page's token, or a wrong one, gets 403."""
    await area_http.get("/")  # the browser now holds the CSRF cookie
    assert "jdx_csrf" in area_http.cookies
    browser = {"Origin": area_console.url}
    answer = await area_http.post("/test/form", headers=browser)
    assert answer.status_code == 403
    assert "CSRF token" in answer.text
    wrong = await area_http.post("/test/form", headers={**browser, "X-CSRF-Token": "x" * 43})
    assert wrong.status_code == 403


async def test_api_client_with_a_cookie_jar_needs_no_token(area_http: httpx.AsyncClient) -> None:
    """A test suite's session client (keeps cookies, sends no Origin) is not a browser."""
    await area_http.get("/")
    assert "jdx_csrf" in area_http.cookies
    answer = await area_http.post("/test/form")
    assert answer.status_code == 200


async def test_fetch_metadata_marks_a_browser(area_http: httpx.AsyncClient) -> None:
    """A POST with Sec-Fetch-* headers (a browser) but no cookie or token is refused."""
    answer = await area_http.post("/test/form", headers={"Sec-Fetch-Site": "same-origin"})
    assert answer.status_code == 403


async def test_csrf_form_field_is_accepted(
    area_console: Console, area_http: httpx.AsyncClient
) -> None:
    """A plain HTML form may send the token as the csrf_token field."""
    token = page_token((await area_http.get("/")).text)
    answer = await area_http.post(
        "/test/form", data={"csrf_token": token}, headers={"Origin": area_console.url}
    )
    assert answer.status_code == 200


async def test_plain_api_client_on_loopback_needs_no_token(area_console: Console) -> None:
    """curl-like clients (no Origin, no cookie) may POST without a token when open."""
    async with httpx.AsyncClient(base_url=area_console.url) as client:
        answer = await client.post("/test/form")
    assert answer.status_code == 200


# -- headers --------------------------------------------------------------------------------


async def test_every_answer_has_the_security_headers(http: httpx.AsyncClient) -> None:
    """Pages, API answers and errors carry CSP, no-store, nosniff and a same-origin
    referrer policy (other sites get no referrer)."""
    for path in ("/", "/api/v1/nothing-here", "/no-page", "/login"):
        answer = await http.get(path)
        assert answer.headers["Content-Security-Policy"] == CSP, path
        assert answer.headers["Cache-Control"] == "no-store", path
        assert answer.headers["X-Content-Type-Options"] == "nosniff", path
        assert answer.headers["Referrer-Policy"] == "same-origin", path
    assert "'unsafe-inline'" not in CSP
    static = await http.get("/static/console.js")
    assert static.status_code == 200
    assert static.headers["X-Content-Type-Options"] == "nosniff"


# -- errors ---------------------------------------------------------------------------------


@pytest.fixture
async def area_http(area_console: Console) -> AsyncIterator[httpx.AsyncClient]:
    """A plain client on a console with the test area."""
    async with httpx.AsyncClient(base_url=area_console.url, timeout=10) as client:
        yield client


async def test_malformed_json_is_a_clear_400(area_http: httpx.AsyncClient) -> None:
    """A body that is not JSON gets 400 saying where it broke, not a traceback."""
    answer = await area_http.post("/api/v1/test/echo", content=b'{"a": ')
    assert answer.status_code == 400
    assert "not valid JSON" in answer.json()["error"]
    assert "fix" in answer.json()
    listed = await area_http.post("/api/v1/test/echo", content=b"[1, 2]")
    assert listed.status_code == 400
    good = await area_http.post("/api/v1/test/echo", json={"a": 1})
    assert good.json() == {"a": 1}


async def test_api_csrf_refusal_is_json(area_http: httpx.AsyncClient) -> None:
    """A browser's API call without the token gets a JSON 403 that JDX.api can show."""
    origin = str(area_http.base_url).rstrip("/")
    answer = await area_http.post("/api/v1/test/echo", json={}, headers={"Origin": origin})
    assert answer.status_code == 403
    assert answer.json()["error"] == "missing or wrong CSRF token"


async def test_huge_body_is_refused_with_413(area_http: httpx.AsyncClient) -> None:
    """A body over the limit gets 413 JSON, whether it declares its length or not."""
    big = b"x" * (MAX_BODY + 1)
    declared = await area_http.post("/api/v1/test/echo", content=big)
    assert declared.status_code == 413
    assert "larger than" in declared.json()["error"]

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b" " * (MAX_BODY // 2)

    streamed = await area_http.post("/api/v1/test/echo", content=chunks())
    assert streamed.status_code == 413


async def test_unknown_paths_are_404_json_for_api_and_a_page_otherwise(
    http: httpx.AsyncClient,
) -> None:
    """/api/... unknown: JSON 404; an unknown page: an HTML page with the nav."""
    api = await http.get("/api/v1/nothing-here")
    assert api.status_code == 404
    assert api.json()["error"].startswith("no such API resource")
    page = await http.get("/no-page")
    assert page.status_code == 404
    assert page.headers["content-type"].startswith("text/html")
    assert ">Inbox</a>" in page.text


async def test_handler_crash_is_500_without_details(
    area_http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    """An exception in a handler is logged and answered 500 with no detail or traceback."""
    api = await area_http.get("/api/v1/test/crash")
    assert api.status_code == 500
    assert api.json()["error"] == "the console could not answer this request"
    page = await area_http.get("/test/crash")
    assert page.status_code == 500
    for text in (api.text, page.text):
        assert "/etc/secret" not in text
        assert "Traceback" not in text
    assert any("/etc/secret" in r.getMessage() for r in caplog.records)


# -- console users ----------------------------------------------------------------------------


async def test_with_users_pages_need_a_login_and_api_needs_basic(
    make_console: MakeConsole,
) -> None:
    """With WebUI.Users a page redirects to /login, the API answers 401 with Basic."""
    console = await make_console(users_config())
    async with httpx.AsyncClient(base_url=console.url) as client:
        page = await client.get("/queue?x=1")
        assert page.status_code == 303
        assert page.headers["location"] == "/login?next=%2Fqueue%3Fx%3D1"
        api = await client.get("/api/v1/events")
        assert api.status_code == 401
        assert api.headers["WWW-Authenticate"].startswith("Basic")
        wrong = await client.get("/", auth=(ADMIN, "nope"))
        assert wrong.status_code == 401
        right = await client.get("/", auth=(ADMIN, ADMIN_PASSWORD))
        assert right.status_code == 200
        post = await client.post("/logout", auth=(ADMIN, ADMIN_PASSWORD))
        assert post.status_code == 303


async def test_login_sets_a_strict_httponly_session_cookie(make_console: MakeConsole) -> None:
    """Logging in gives an HttpOnly SameSite=Strict cookie that opens the pages."""
    console = await make_console(users_config())
    async with httpx.AsyncClient(base_url=console.url) as client:
        answer = await login(client)
        assert answer.status_code == 303
        cookie = next(c for c in answer.headers.get_list("set-cookie") if "jdx_session" in c)
        assert "HttpOnly" in cookie
        assert "SameSite=strict" in cookie or "SameSite=Strict" in cookie
        assert "Secure" not in cookie  # plain HTTP on loopback
        home = await client.get("/")
        assert home.status_code == 200
        assert ">admin</span>" in home.text
        token = page_token(home.text)
        refused = await client.post("/logout")
        assert refused.status_code == 403
        out = await client.post("/logout", headers={"X-CSRF-Token": token})
        assert out.status_code == 303
        after = await client.get("/")
        assert after.status_code == 303


async def test_wrong_password_login_is_refused(make_console: MakeConsole) -> None:
    """A wrong password shows the login page again with the message and no session."""
    console = await make_console(users_config())
    async with httpx.AsyncClient(base_url=console.url) as client:
        answer = await login(client, "wrong")
        assert answer.status_code == 401
        assert "wrong user name or password" in answer.text
        assert "jdx_session" not in answer.headers.get("set-cookie", "")


async def test_logins_are_throttled_like_smtp_auth(make_console: MakeConsole) -> None:
    """After AuthFailureLimit failures even the right password is refused (429)."""
    console = await make_console(users_config(limit=2))
    async with httpx.AsyncClient(base_url=console.url) as client:
        assert (await login(client, "wrong1")).status_code == 401
        assert (await login(client, "wrong2")).status_code == 401
        blocked = await login(client)
        assert blocked.status_code == 429
        assert "too many failed logins" in blocked.text
        assert "jdx_session" not in blocked.headers.get("set-cookie", "")
    async with httpx.AsyncClient(base_url=console.url) as api:
        basic = await api.get("/api/v1/events", auth=(ADMIN, ADMIN_PASSWORD))
        assert basic.status_code == 429


async def test_login_next_never_leaves_the_console(make_console: MakeConsole) -> None:
    """A login link with next=//evil.example goes to / instead."""
    console = await make_console(users_config())
    async with httpx.AsyncClient(base_url=console.url) as client:
        form = await client.get("/login?next=//evil.example/x")
        token = HIDDEN_TOKEN.search(form.text)
        assert token
        answer = await client.post(
            "/login",
            data={
                "username": ADMIN,
                "password": ADMIN_PASSWORD,
                "csrf_token": token.group(1),
                "next": "//evil.example/x",
            },
        )
        assert answer.headers["location"] == "/"


async def test_no_secret_in_any_page_or_api_answer(make_console: MakeConsole) -> None:
    """No GET route of the console (every area's) shows a password, hash or relay secret.

    Downloads (``Content-Disposition: attachment``, e.g. the config backup) are held to
    the same rule, and must not be cached either.
    """
    console = await make_console(users_config())
    assert console.web.app is not None
    paths = [
        route.path
        for route in console.web.app.routes
        if isinstance(route, Route)
        and "GET" in (route.methods or ())
        and "{" not in route.path
        and route.path != "/api/v1/events"
    ]
    assert "/" in paths
    secrets = [ADMIN_PASSWORD, ADMIN_HASH, SMTP_PASSWORD, SMTP_HASH, RELAY_PASSWORD]
    async with httpx.AsyncClient(base_url=console.url, auth=(ADMIN, ADMIN_PASSWORD)) as client:
        for path in [*paths, "/no-page", "/api/v1/no-such"]:
            try:
                answer = await client.get(path, timeout=3)
            except httpx.ReadTimeout:
                continue  # a long poll (wait for a message) that has nothing to say yet
            assert answer.status_code < 500, path
            if answer.headers.get("content-disposition", "").startswith("attachment"):
                assert answer.headers["cache-control"] == "no-store", path
            for secret in secrets:
                assert secret not in answer.text, (path, secret[:6])


# -- TLS and off loopback ---------------------------------------------------------------------


@pytest.fixture
def cert_files(tmp_path: Path, server_cert: trustme.LeafCert) -> dict[str, str]:
    """CertFile/KeyFile of a trustme certificate for localhost and 127.0.0.1."""
    cert, key = tmp_path / "web-cert.pem", tmp_path / "web-key.pem"
    server_cert.private_key_and_cert_chain_pem.write_to_path(str(cert))
    server_cert.private_key_pem.write_to_path(str(key))
    return {"CertFile": str(cert), "KeyFile": str(key)}


async def test_https_console_marks_the_session_cookie_secure(
    make_console: MakeConsole, cert_files: dict[str, str], ca: trustme.CA
) -> None:
    """With WebUI.Tls the console speaks HTTPS and the session cookie is Secure."""
    console = await make_console(users_config(web={"Tls": cert_files}))
    assert console.url.startswith("https://127.0.0.1:")
    context = ssl.create_default_context()
    ca.configure_trust(context)
    async with httpx.AsyncClient(base_url=console.url, verify=context) as client:
        answer = await login(client)
        assert answer.status_code == 303
        cookie = next(c for c in answer.headers.get_list("set-cookie") if "jdx_session" in c)
        assert "Secure" in cookie
        assert "HttpOnly" in cookie


async def test_off_loopback_without_users_and_tls_refuses_to_start(
    make_console: MakeConsole,
) -> None:
    """Binding the console to 0.0.0.0 with no users or TLS raises a clear setup error."""
    with pytest.raises(ConsoleSetupError) as raised:
        await make_console(web_bind="0.0.0.0")
    assert "off loopback" in str(raised.value)
    assert "no console user" in str(raised.value)
    assert "TLS is off" in str(raised.value)
    assert "127.0.0.1" in raised.value.fix


async def test_off_loopback_with_users_and_tls_starts(
    make_console: MakeConsole, cert_files: dict[str, str], ca: trustme.CA
) -> None:
    """With console users and TLS the console may listen on every interface."""
    console = await make_console(users_config(web={"Tls": cert_files}), web_bind="0.0.0.0")
    port = console.web.context.port  # type: ignore[union-attr]
    context = ssl.create_default_context()
    ca.configure_trust(context)
    async with httpx.AsyncClient(verify=context) as client:
        closed = await client.get(f"https://127.0.0.1:{port}/api/v1/no-such")
        assert closed.status_code == 401
        answer = await client.get(f"https://127.0.0.1:{port}/", auth=(ADMIN, ADMIN_PASSWORD))
        assert answer.status_code == 200


def test_serve_refuses_an_unprotected_console_off_loopback(tmp_path: Path) -> None:
    """serve exits 1 with the reason and the fix, no traceback, when WebUI is exposed."""
    config = tmp_path / "appsettings.json"
    config.write_text('{"WebUI": {"BindAddress": "0.0.0.0"}}', encoding="utf-8")
    config.chmod(0o600)
    result = subprocess.run(
        [sys.executable, "-m", "jdxmail", "serve", "--config", str(config), "--port", "0"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "off loopback" in result.stderr
    assert "fix:" in result.stderr
    assert "Traceback" not in result.stderr
    assert "listening on" not in result.stdout


def test_validate_config_reports_an_unprotected_console(runner: CliRunner, tmp_path: Path) -> None:
    """validate-config names WebUI.BindAddress and its line when the console is exposed."""
    config = tmp_path / "appsettings.json"
    config.write_text('{\n  "WebUI": {\n    "BindAddress": "0.0.0.0"\n  }\n}\n', encoding="utf-8")
    config.chmod(0o600)
    code, out, _ = invoke(runner, "validate-config", "--config", str(config))
    assert code != 0
    assert "WebUI.BindAddress" in out
    assert "line 3" in out
    assert "off loopback" in out


async def test_doctor_reports_an_unprotected_console(tmp_path: Path) -> None:
    """doctor has a failed row saying the console would listen off loopback unprotected."""
    config = tmp_path / "appsettings.json"
    config.write_text('{"WebUI": {"BindAddress": "0.0.0.0"}}', encoding="utf-8")
    config.chmod(0o600)
    report = await run_doctor(config, relay_timeout=1)
    rows = [row for row in report.rows if "WebUI.BindAddress" in row.summary]
    assert len(rows) == 1
    assert rows[0].ok is False
    assert not report.ok


async def test_console_can_use_the_smtp_certificate(
    make_console: MakeConsole, cert_files: dict[str, str], ca: trustme.CA
) -> None:
    """WebUI.UseSmtpCertificate serves HTTPS with SmtpServer.Tls's certificate."""
    config = json.loads(users_config(web={"UseSmtpCertificate": True}))
    config["SmtpServer"]["Tls"] = cert_files
    console = await make_console(json.dumps(config))
    assert console.url.startswith("https://")
    context = ssl.create_default_context()
    ca.configure_trust(context)
    async with httpx.AsyncClient(base_url=console.url, verify=context) as client:
        answer = await client.get("/", auth=(ADMIN, ADMIN_PASSWORD))
    assert answer.status_code == 200


async def test_text_in_pages_is_escaped(http: httpx.AsyncClient) -> None:
    """Markup in a requested path is shown as text on the 404 page, never run."""
    answer = await http.get("/%3Cscript%3Ealert(1)%3C/script%3E")
    assert answer.status_code == 404
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in answer.text
    assert "<script>alert" not in answer.text


async def test_changed_password_takes_effect_on_reload(make_console: MakeConsole) -> None:
    """After a reload with a new hash the old password no longer opens the API."""
    console = await make_console(users_config())
    async with httpx.AsyncClient(base_url=console.url) as client:
        assert (await client.get("/", auth=(ADMIN, ADMIN_PASSWORD))).status_code == 200
        config = json.loads(console.config_path.read_text())
        config["WebUI"]["Users"][0] = {"UserName": ADMIN, "Password": hash_password("new-pw")}
        console.config_path.write_text(json.dumps(config))
        assert console.app.reload()
        assert (await client.get("/", auth=(ADMIN, ADMIN_PASSWORD))).status_code == 401
        assert (await client.get("/", auth=(ADMIN, "new-pw"))).status_code == 200


async def test_off_loopback_console_closes_when_its_users_are_removed(
    make_console: MakeConsole, cert_files: dict[str, str], ca: trustme.CA
) -> None:
    """A reload that removes every console user of an exposed console shuts it (503)."""
    console = await make_console(users_config(web={"Tls": cert_files}), web_bind="0.0.0.0")
    config = json.loads(console.config_path.read_text())
    config["WebUI"]["Users"] = []
    console.config_path.write_text(json.dumps(config))
    assert console.app.reload()
    port = console.web.context.port  # type: ignore[union-attr]
    context = ssl.create_default_context()
    ca.configure_trust(context)
    async with httpx.AsyncClient(verify=context) as client:
        answer = await client.get(f"https://127.0.0.1:{port}/")
        api = await client.get(f"https://127.0.0.1:{port}/api/v1/events")
    assert answer.status_code == 503
    assert "no console user" in answer.text
    assert api.status_code == 503
    assert "no console user" in api.json()["error"]


async def test_form_after_the_session_ended_goes_to_login(make_console: MakeConsole) -> None:
    """A page's form posted after a restart (no session) leads to the login form, and
    its Log out button just goes there."""
    console = await make_console(users_config())
    async with httpx.AsyncClient(base_url=console.url) as client:
        assert (await login(client)).status_code == 303
        token = page_token((await client.get("/")).text)
        console.web.context.auth.close_session(client.cookies["jdx_session"])  # type: ignore[union-attr]
        browser = {"Origin": console.url, "Sec-Fetch-Site": "same-origin"}
        posted = await client.post("/settings", data={"csrf_token": token}, headers=browser)
        assert posted.status_code == 303
        assert posted.headers["location"] == "/login?next=%2Fsettings"
        out = await client.post("/logout", data={"csrf_token": token}, headers=browser)
        assert out.status_code == 303
        assert out.headers["location"] == "/login"


def test_validate_config_reports_a_console_port_clash(runner: CliRunner, tmp_path: Path) -> None:
    """WebUI.Port equal to SmtpServer.Port is an error naming WebUI.Port."""
    config = tmp_path / "appsettings.json"
    config.write_text('{"SmtpServer": {"Port": 5001}, "WebUI": {"Port": 5001}}', encoding="utf-8")
    config.chmod(0o600)
    code, out, _ = invoke(runner, "validate-config", "--config", str(config))
    assert code != 0
    assert "WebUI.Port" in out
    assert "both 5001" in out


async def test_console_user_added_by_reload_is_masked_in_logs(make_console: MakeConsole) -> None:
    """A console user's hash that arrives with a reload never appears in a log line."""
    console = await make_console()
    new_hash = hash_password("added-later-pw", HashType.SCRYPT)
    config = json.loads(users_config())
    config["WebUI"]["Users"] = [{"UserName": "late", "Password": new_hash, "HashType": "SCRYPT"}]
    console.config_path.write_text(json.dumps(config))
    assert console.app.reload()
    async with httpx.AsyncClient(base_url=console.url) as client:
        assert (await client.get("/", auth=("late", "added-later-pw"))).status_code == 200
    record = logging.LogRecord("jdxmail.web", logging.INFO, __file__, 1, new_hash, None, None)
    MaskingFilter().filter(record)
    assert new_hash not in record.getMessage()


async def test_a_console_user_added_with_the_cli_closes_an_open_console(
    console: Console,
) -> None:
    """`jdxmail user add --console` on the running console's config: after the reload the
    API wants that user's login, and the SMTP users are untouched."""
    async with httpx.AsyncClient(base_url=console.url) as client:
        assert (await client.get("/api/v1/status")).status_code == 200
        code, _, err = invoke(
            CliRunner(),
            "user",
            "add",
            "--console",
            ADMIN,
            "--config",
            str(console.config_path),
            "--password-stdin",
            input=f"{ADMIN_PASSWORD}\n",
        )
        assert code == 0, err
        assert console.app.reload()
        assert (await client.get("/api/v1/status")).status_code == 401
        allowed = await client.get("/api/v1/status", auth=(ADMIN, ADMIN_PASSWORD))
        assert allowed.status_code == 200
    settings = load_settings(console.config_path).settings
    assert [u.user_name for u in settings.web_ui.users] == [ADMIN]
    assert settings.smtp_server.users == []
