"""The dashboard of ``serve --workers 2``: one console showing the figures of all workers."""

from __future__ import annotations

import json
import re
import signal
import smtplib
import time
from pathlib import Path

import httpx

from tests.server.test_lifecycle import ServeProcess, serve

__all__ = ["serve"]  # the fixture

CONSOLE = re.compile(r"web console on (http://\S+?)/?$")


def test_counts_of_every_worker_are_summed(tmp_path: Path, serve: list[ServeProcess]) -> None:
    """Mail taken by either worker counts on the one console; stopping the shared
    listeners from it is refused with the reason."""
    server = ServeProcess(tmp_path, "--workers", "2", "--web-port", "0")
    serve.append(server)
    assert server.proc.stdout is not None
    url = ""
    for line in server.proc.stdout:
        found = CONSOLE.search(line.strip())
        if found:
            url = found.group(1)
            break
    assert url
    sent = 40  # the kernel spreads new connections over both workers
    for number in range(sent):
        with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
            client.sendmail("app@localhost", ["someone@localhost"], f"Subject: {number}\r\n\r\n.")
    with httpx.Client(base_url=url, timeout=10) as http:
        deadline = time.monotonic() + 15
        status = http.get("/api/v1/status").json()
        # the other worker writes its figures once a second
        while status["today"]["accepted"] < sent and time.monotonic() < deadline:
            time.sleep(0.2)
            status = http.get("/api/v1/status").json()
        assert status["today"]["accepted"] == sent
        running = [p for p in status["processes"] if p["running"] and p["role"] == "smtp"]
        assert len(running) == 2
        files = sorted((tmp_path / "data" / "smtp" / "spool" / "stats").glob("smtp.*.json"))
        per_worker = [json.loads(f.read_text())["today"]["accepted"] for f in files]
        assert len(per_worker) == 2
        assert all(count > 0 for count in per_worker), per_worker  # both took mail
        assert status["listeners"]["can_stop"] is False
        refused = http.post("/api/v1/listeners/stop")
        assert refused.status_code == 409
        assert "--workers" in refused.json()["error"]
    code, _ = server.stop(signal.SIGTERM)
    assert code == 0
