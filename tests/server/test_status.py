"""The dashboard's core: counters, stats files shared between processes, stop/start."""

from __future__ import annotations

import asyncio
import json
import smtplib
import subprocess
import sys
from pathlib import Path

import pytest

from jdxmail.server.app import SmtpServerApp
from jdxmail.server.status import server_status
from jdxmail.stats import STATS_DIR, collect
from tests.server.conftest import Client, StartServer, make_settings, port_of


def _send(port: int, rcpt: str = "bob@localhost") -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.sendmail("alice@example.com", [rcpt], b"Subject: hi\r\n\r\nhello\r\n")


async def test_status_counts_accepted_and_rejected_mail(
    tmp_path: Path, start_server: StartServer
) -> None:
    """Two messages accepted and one recipient refused show as exactly 2 and 1 today."""
    app = await start_server(make_settings(tmp_path, LocalDomains=["localhost"]))
    port = port_of(app)
    await asyncio.to_thread(_send, port)
    await asyncio.to_thread(_send, port)
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        await asyncio.to_thread(_send, port, "someone@elsewhere.example")
    status = await asyncio.to_thread(server_status, app)
    data = status.to_json()
    assert data["today"]["accepted"] == 2
    assert data["today"]["rejected"] == 1
    assert data["today"]["connections"] == 3
    assert data["listeners"]["state"] == "listening"
    assert data["listeners"]["addresses"][0]["port"] == port
    assert data["listeners"]["addresses"][0]["tls"] == "none"
    assert data["queue"]["queued"] == 0


async def test_stats_file_holds_the_counts_after_stop(tmp_path: Path) -> None:
    """A stopped server's counts stay in its stats file and still count for today."""
    app = SmtpServerApp(make_settings(tmp_path, LocalDomains=["localhost"]), port=0)
    await app.start()
    await asyncio.to_thread(_send, port_of(app))
    await app.stop(1.0)
    files = list((tmp_path / "spool" / STATS_DIR).glob("smtp.*.json"))
    assert len(files) == 1
    assert json.loads(files[0].read_text())["today"]["accepted"] == 1
    totals = collect(tmp_path / "spool")
    assert totals.today["accepted"] == 1


def test_figures_of_other_processes_are_summed(tmp_path: Path) -> None:
    """Counts written by two other processes (SMTP workers) add up in collect()."""
    script = (
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from jdxmail.stats import Counters, StatsRecorder\n"
        "async def main():\n"
        "    c = Counters(); c.accepted = int(sys.argv[2]); c.relayed = 1\n"
        "    r = StatsRecorder(Path(sys.argv[1]), 'smtp', c, sessions=lambda: 4)\n"
        "    await r.start(); await r.stop()\n"
        "asyncio.run(main())\n"
    )
    spool = tmp_path / "spool"
    for count in ("3", "5"):
        subprocess.run([sys.executable, "-c", script, str(spool), count], check=True)
    totals = collect(spool)
    assert totals.today["accepted"] == 8
    assert totals.today["relayed"] == 2
    assert totals.sessions == 0  # both processes ended: their sessions are gone
    assert totals.total["accepted"] == 0  # since-start counts: of running processes only
    assert len(totals.processes) == 2
    assert not any(p["running"] for p in totals.processes)


async def test_pause_refuses_connections_and_resume_accepts_again(
    tmp_path: Path, start_server: StartServer
) -> None:
    """Stopped listeners refuse new clients while an open session goes on; started again
    they accept on the same port."""
    app = await start_server(make_settings(tmp_path, LocalDomains=["localhost"]))
    port = port_of(app)
    open_session = await Client.connect(port)
    await open_session.ehlo()
    assert await app.pause_listeners() is True
    assert await app.pause_listeners() is False
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)
    # the session that was open finishes its mail
    assert (await open_session.cmd("MAIL FROM:<a@example.com>")).startswith("250")
    assert (await open_session.cmd("RCPT TO:<bob@localhost>")).startswith("250")
    assert (await open_session.cmd("DATA")).startswith("354")
    assert (await open_session.cmd("Subject: x\r\n\r\nbody\r\n.")).startswith("250")
    await open_session.close()
    status = await asyncio.to_thread(server_status, app)
    assert status.listener_state == "stopped"
    assert status.listening_since is None
    assert await app.resume_listeners() is True
    again = await Client.connect(port)
    await again.ehlo()
    await again.close()
    await asyncio.to_thread(_send, port)
    status = await asyncio.to_thread(server_status, app)
    assert status.listener_state == "listening"
    assert status.today["accepted"] == 2


async def test_relay_failure_shows_as_failing_with_its_reply(
    tmp_path: Path, start_server: StartServer, unused_tcp_port: int
) -> None:
    """A relay nobody listens on shows as failing, with the connection error as reply."""
    relay = {"Name": "upstream", "Host": "127.0.0.1", "Port": unused_tcp_port, "UseTls": False}
    app = await start_server(
        make_settings(tmp_path, RelayServers=[relay], TrustedNetworks=["127.0.0.1/32"])
    )
    await asyncio.to_thread(_send, port_of(app), "bob@example.net")
    from jdxmail.queue.worker import DeliveryEngine

    engine = next(c for c in app._started_components if isinstance(c, DeliveryEngine))
    await engine.wait_idle()
    status = (await asyncio.to_thread(server_status, app)).to_json()
    (upstream,) = status["relays"]
    assert upstream["name"] == "upstream"
    assert upstream["state"] == "failing"
    assert upstream["failures"] == 1
    assert "refused" in upstream["last_reply"].lower()
    assert status["today"]["deferred"] == 1
    assert status["queue"]["queued"] == 1
    assert status["queue"]["oldest_age_seconds"] is not None
    for _ in range(2):  # two more failures in a row open the circuit breaker
        engine.flush()
        await engine.wait_idle()
    status = (await asyncio.to_thread(server_status, app)).to_json()
    (upstream,) = status["relays"]
    assert upstream["state"] == "resting"
    assert upstream["failures"] == 3
    assert upstream["resting_until"] > status["now"]


async def test_resume_keeps_the_proxy_listener_a_proxy_listener(
    tmp_path: Path, start_server: StartServer
) -> None:
    """After stop and start the PROXY port still reads the balancer's header first."""
    from tests.server.test_proxy import proxied, v1

    app = await start_server(make_settings(tmp_path), proxy_port=0)
    assert await app.pause_listeners()
    assert await app.resume_listeners()
    assert any(a.proxy for a in app.addresses)
    client = await proxied(app, v1())
    # a plain listener would have answered the PROXY line first (500 unknown command)
    assert (await client.cmd("HELO client.test")).startswith("250")
    await client.close()
    status = (await asyncio.to_thread(server_status, app)).to_json()
    assert [a["proxy"] for a in status["listeners"]["addresses"]] == [False, True]
