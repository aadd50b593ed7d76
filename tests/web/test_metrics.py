"""``/metrics``: exact figures after a known load, through a real serve (and workers)."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from jdxmail.passwords import hash_password
from tests.server.test_lifecycle import ServeProcess, serve
from tests.web.conftest import MakeConsole
from tests.web.upstream import Upstream

__all__ = ["serve"]  # the fixture

Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]
CONSOLE = re.compile(r"web console on (http://\S+?)/?$")
USER, PASSWORD = "app@example.com", "s3cret-pass"
#: a message as smtplib sends it (CRLF line ends); its data is counted as these bytes
MESSAGE = b"Subject: metrics\r\n\r\nhello\r\n"


def parse(text: str) -> Series:
    """Every sample of a scrape by (name, labels)."""
    samples: Series = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def scrape(url: str, **kwargs: object) -> Series:
    """GET /metrics and parse it."""
    response = httpx.get(f"{url}/metrics", timeout=10, **kwargs)  # type: ignore[arg-type]
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


def value(series: Series, name: str, **labels: str) -> float:
    """One sample's value (0 when absent)."""
    return series.get((name, tuple(sorted(labels.items()))), 0.0)


def scrape_until(url: str, done: Callable[[Series], bool]) -> Series:
    """Scrape until *done* holds: other processes write their figures once a second."""
    deadline = time.monotonic() + 20
    series = scrape(url)
    while not done(series) and time.monotonic() < deadline:
        time.sleep(0.2)
        series = scrape(url)
    return series


def console_url(server: ServeProcess) -> str:
    """The console URL serve printed after its listening lines."""
    assert server.proc.stdout is not None
    for line in server.proc.stdout:
        found = CONSOLE.search(line.strip())
        if found:
            return found.group(1)
    raise AssertionError("serve printed no console URL")


def write_relay_config(folder: Path, upstream_port: int) -> Path:
    """A relay config: AUTH needed to relay, 2 recipients at most, 2 KiB messages."""
    config = folder / "appsettings.json"
    user = {"UserName": USER, "Password": hash_password(PASSWORD), "HashType": "SHA256"}
    config.write_text(
        json.dumps(
            {
                "SmtpServer": {
                    "TrustedNetworks": [],
                    "Users": [user],
                    "LocalDomains": ["localhost"],
                    "MaxRecipients": 2,
                    "MaxMessageSize": 2048,
                },
                "RelayServers": [
                    {
                        "Name": "upstream",
                        "Host": "127.0.0.1",
                        "Port": upstream_port,
                        "UseTls": False,
                        "DailyQuota": 100,
                    }
                ],
            }
        ),
        encoding="utf-8",
    )
    config.chmod(0o600)
    return config


def send_known_load(port: int) -> None:
    """3 relayed, 2 local, and one of each refusal; 1 failed and 3 good logins."""
    token = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
    wrong = base64.b64encode(f"\0{USER}\0nope".encode()).decode()
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:  # session 1
        client.ehlo()
        assert client.docmd("AUTH", f"PLAIN {wrong}")[0] == 535
        assert client.docmd("AUTH", f"PLAIN {token}")[0] == 235
        for _ in range(3):
            client.sendmail(USER, ["far@example.org"], MESSAGE)
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:  # session 2: no login
        client.ehlo()
        client.mail("app@localhost")
        assert client.rcpt("far@example.org")[0] == 530  # relay denied: policy
        assert client.rcpt("a@localhost")[0] == 250
        assert client.rcpt("b@localhost")[0] == 250
        assert client.rcpt("c@localhost")[0] == 452  # MaxRecipients: recipients
        assert client.data(MESSAGE)[0] == 250
        client.sendmail("app@localhost", ["a@localhost"], MESSAGE)
        big = b"Subject: big\r\n\r\n" + b"x" * 3000 + b"\r\n"
        assert client.mail("app@localhost")[0] == 250
        assert client.rcpt("a@localhost")[0] == 250
        assert client.data(big)[0] == 552  # MaxMessageSize: size
        client.mail("app@localhost")
        client.rcpt("a@localhost")
        client.putcmd("DATA")
        assert client.getreply()[0] == 354
        client.send(b"Subject: smuggle\r\n\r\nbare\nline\r\n.\r\n")
        assert client.getreply()[0] == 550  # a bare LF: smuggling
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:  # session 3
        client.ehlo()
        assert client.docmd("AUTH", f"PLAIN {token}")[0] == 235
        client.noop()


async def test_scrape_gives_the_exact_counts_of_a_known_load(
    tmp_path: Path, serve: list[ServeProcess]
) -> None:
    """A real serve (delivery process, relay) counts every session, login, message,
    refusal, relay hand-off and byte of a known load, exactly."""
    upstream = await Upstream(mail_reply=None).start()
    try:
        config = write_relay_config(tmp_path, upstream.port)
        server = ServeProcess(tmp_path, "--config", str(config), "--web-port", "0")
        serve.append(server)
        url = console_url(server)
        before = await asyncio.to_thread(scrape, url)
        await asyncio.to_thread(send_known_load, server.port)
        await asyncio.wait_for(upstream.wait_for(3), 30)
        after = await asyncio.to_thread(
            scrape_until, url, lambda s: value(s, "jdxmail_messages_relayed_total") == 3
        )
        assert (await asyncio.to_thread(server.stop))[0] == 0
    finally:
        await upstream.close()

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("jdxmail_connections_total") == 3
    assert delta("jdxmail_sessions_total", tls="none") == 3
    assert delta("jdxmail_sessions_total", tls="starttls") == 0
    assert value(after, "jdxmail_connections_open") == 0
    assert delta("jdxmail_auth_attempts_total", result="success") == 2
    assert delta("jdxmail_auth_attempts_total", result="failure") == 1
    assert delta("jdxmail_messages_accepted_total") == 5
    assert delta("jdxmail_received_bytes_total") == 5 * len(MESSAGE)
    for reason, count in {"policy": 1, "recipients": 1, "size": 1, "smuggling": 1}.items():
        assert delta("jdxmail_messages_rejected_total", reason=reason) == count, reason
    assert delta("jdxmail_messages_rejected_total", reason="throttled") == 0
    assert delta("jdxmail_spool_commit_seconds_count") == 5
    assert delta("jdxmail_messages_relayed_total") == 3
    assert delta("jdxmail_delivery_attempts_total", relay="upstream", outcome="delivered") == 3
    assert delta("jdxmail_delivery_latency_seconds_count") == 3
    assert delta("jdxmail_delivery_latency_seconds_bucket", le="+Inf") == 3
    assert delta("jdxmail_bounces_total") == 0
    assert value(after, "jdxmail_queue_messages", state="queued") == 0
    assert value(after, "jdxmail_relay_quota_used", relay="upstream") == 3
    assert value(after, "jdxmail_relay_quota_limit", relay="upstream") == 100
    assert value(after, "jdxmail_relay_state", relay="upstream", state="ok") == 1
    assert value(after, "jdxmail_relay_breaker_open", relay="upstream") == 0


def test_workers_and_their_console_add_up(tmp_path: Path, serve: list[ServeProcess]) -> None:
    """With serve --workers 2 one scrape counts the mail both workers took, exactly."""
    server = ServeProcess(tmp_path, "--workers", "2", "--web-port", "0")
    serve.append(server)
    url = console_url(server)
    before = scrape(url)
    sent = 40  # the kernel spreads new connections over both workers
    for _ in range(sent):
        with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
            client.sendmail("app@localhost", ["someone@localhost"], MESSAGE)
    after = scrape_until(
        url,
        lambda s: (
            value(s, "jdxmail_messages_accepted_total")
            - value(before, "jdxmail_messages_accepted_total")
            >= sent
        ),
    )
    files = sorted((tmp_path / "data" / "smtp" / "spool" / "stats").glob("smtp.*.json"))
    per_worker = [json.loads(f.read_text())["total"]["accepted"] for f in files]
    assert len(per_worker) == 2
    assert all(count > 0 for count in per_worker), per_worker  # both took mail

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("jdxmail_messages_accepted_total") == sent
    assert delta("jdxmail_connections_total") == sent
    assert delta("jdxmail_received_bytes_total") == sent * len(MESSAGE)
    assert delta("jdxmail_spool_commit_seconds_count") == sent
    assert server.stop(signal.SIGTERM)[0] == 0


async def test_limits_and_tls_modes_are_counted(make_console: MakeConsole) -> None:
    """Sessions by TLS mode (none, STARTTLS, implicit) and a MaxConnections refusal count."""
    console = await make_console(
        '{"SmtpServer": {"TrustedNetworks": ["127.0.0.0/8"], "MaxConnections": 1}}',
        self_signed=True,
        implicit_tls_port=0,
    )
    tls_port = next(a.port for a in console.app.addresses if a.implicit_tls)
    insecure = ssl.create_default_context()
    insecure.check_hostname, insecure.verify_mode = False, ssl.CERT_NONE

    def sessions() -> None:
        with smtplib.SMTP("127.0.0.1", console.smtp_port, timeout=10) as plain:
            plain.ehlo()
            with pytest.raises(smtplib.SMTPConnectError, match="421"):
                smtplib.SMTP("127.0.0.1", console.smtp_port, timeout=10)
        with smtplib.SMTP("127.0.0.1", console.smtp_port, timeout=10) as upgraded:
            upgraded.starttls(context=insecure)
            upgraded.ehlo()
        with smtplib.SMTP_SSL("127.0.0.1", tls_port, timeout=10, context=insecure) as implicit:
            implicit.ehlo()

    await asyncio.to_thread(sessions)
    async with httpx.AsyncClient(base_url=console.url) as http:
        text = (await http.get("/metrics")).text
    series = parse(text)
    assert value(series, "jdxmail_sessions_total", tls="none") == 1
    assert value(series, "jdxmail_sessions_total", tls="starttls") == 1
    assert value(series, "jdxmail_sessions_total", tls="implicit") == 1
    assert value(series, "jdxmail_connections_refused_total", limit="MaxConnections") == 1
    assert value(series, "jdxmail_connections_total") == 3


async def test_metrics_need_a_console_login_when_users_exist(make_console: MakeConsole) -> None:
    """With console users /metrics wants HTTP Basic (Prometheus' basic_auth); with it, 200."""
    user = json.dumps(
        {"UserName": "prom", "Password": hash_password("scrape"), "HashType": "SHA256"}
    )
    console = await make_console(f'{{"WebUI": {{"Users": [{user}]}}}}')
    async with httpx.AsyncClient(base_url=console.url) as http:
        refused = await http.get("/metrics")
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith("Basic")
        assert (await http.get("/metrics", auth=("prom", "wrong"))).status_code == 401
        allowed = await http.get("/metrics", auth=("prom", "scrape"))
    assert allowed.status_code == 200
    assert "jdxmail_connections_total 0.0" in allowed.text


def test_metrics_listener_without_the_console(tmp_path: Path, serve: list[ServeProcess]) -> None:
    """serve --no-web --metrics-port 0 serves /metrics with this process's figures."""
    server = ServeProcess(tmp_path, "--no-web", "--metrics-port", "0")
    serve.append(server)
    assert server.proc.stdout is not None
    url = ""
    for line in server.proc.stdout:
        found = re.search(r"metrics and health checks on (http://\S+)/metrics", line)
        if found:
            url = found.group(1)
            break
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
        client.sendmail("app@localhost", ["someone@localhost"], MESSAGE)
    series = scrape(url)
    assert value(series, "jdxmail_messages_accepted_total") == 1
    assert value(series, "jdxmail_received_bytes_total") == len(MESSAGE)
    assert server.stop()[0] == 0


def test_a_taken_metrics_port_stops_serve_with_the_reason(tmp_path: Path) -> None:
    """Metrics asked for on a port another program holds: serve does not start, says
    which key to change, and leaves no traceback (the console on a taken port only
    warns: it is on by default, metrics are asked for)."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "jdxmail", "serve", "--port", "0", "--no-web",
             "--metrics-port", str(taken)],
            cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert done.returncode != 0
    assert f"127.0.0.1:{taken}" in done.stderr
    assert "Metrics.Port" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
