"""bench/run.py --smoke runs every available path and reports what it could not run.

This checks that the benchmark works, not its figures: the run uses tiny counts.
With Postfix's tools missing, the peers that need them must be reported as
unavailable (with the apt-get hint) while the jdxmail and aiosmtpd rows still run.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "run.py"


HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


@pytest.fixture(scope="module")
def smoke_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the smoke run writes its --json (and, with matplotlib, smoke.png beside it)."""
    return tmp_path_factory.mktemp("bench") / "smoke.json"


@pytest.fixture(scope="module")
def smoke(smoke_json: Path) -> tuple[dict[str, Any], str]:
    """One ``--smoke`` run: its JSON results and its printed report."""
    out = smoke_json
    plot = ["--plot", str(out.with_suffix(".png"))] if HAVE_MATPLOTLIB else []
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--smoke", "--json", str(out), *plot],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def _figure(results: dict[str, Any], workload: str, server: str, metric: str) -> dict[str, Any]:
    for fig in results["figures"]:
        if (fig["workload"], fig["server"], fig["metric"]) == (workload, server, metric):
            return dict(fig)
    raise AssertionError(f"no figure for {workload} / {server} / {metric}")


def test_jdxmail_and_aiosmtpd_rows_are_measured(smoke: tuple[dict[str, Any], str]) -> None:
    """jdxmail serve and aiosmtpd's Sink both get an ingest rate for 1 KB and 100 KB."""
    results, _ = smoke
    assert results["servers"]["jdxmail"] == "ok"
    for workload in ("1k-s20", "100k-s20"):
        for server in ("jdxmail", "aiosmtpd Sink"):
            fig = _figure(results, workload, server, "ingest")
            assert fig["error"] is None
            assert fig["median"] > 0


def test_jdxmail_end_to_end_is_measured_or_explained(smoke: tuple[dict[str, Any], str]) -> None:
    """The jdxmail end-to-end row has a rate, or says why it could not be measured."""
    results, _ = smoke
    fig = _figure(results, "1k-s20", "jdxmail", "e2e")
    assert fig["median"] or fig["error"]


def test_missing_postfix_tools_are_reported(smoke: tuple[dict[str, Any], str]) -> None:
    """With Postfix's tools every row runs; without them the peers say how to get them."""
    results, report = smoke
    if shutil.which("smtp-source") and shutil.which("smtp-sink") and shutil.which("postfix"):
        assert results["client"] == "smtp-source"
        assert _figure(results, "1k-s20", "smtp-sink", "ingest")["median"] > 0
        assert _figure(results, "1k-s20", "postfix", "e2e")["median"] > 0
        assert _figure(results, "1k-s20", "jdxmail held", "ingest")["median"] > 0
        assert _figure(results, "1k-s20", "jdxmail drain", "deliver")["median"] > 0
    else:
        assert "apt-get install postfix" in report
        assert results["servers"].get("smtp-sink", "").startswith("unavailable")


def test_report_has_ratios_memory_startup_and_targets(smoke: tuple[dict[str, Any], str]) -> None:
    """The printed report shows ratios to jdxmail, memory, start-up and each target's status."""
    results, report = smoke
    assert "jdx ingest ÷" in report
    assert "idle sessions" in report
    assert "jdxmail --version" in report
    names = [t["name"] for t in results["targets"]]
    assert any("aiosmtpd Sink" in n for n in names)
    assert any("--version" in n for n in names)
    assert all(t["status"] in ("met", "MISSED", "not measured", "info") for t in results["targets"])
    memory = {(m["test"], m["server"]): m for m in results["memory"]}
    assert "error" not in memory[("idle", "jdxmail")]
    assert memory[("idle", "jdxmail")]["fds"] > memory[("idle", "jdxmail")]["baseline_fds"]
    assert "error" not in memory[("big", "jdxmail")]


def _target(results: dict[str, Any], start: str) -> dict[str, Any]:
    found = [t for t in results["targets"] if t["name"].startswith(start)]
    assert found, f"no target named {start}…"
    return dict(found[0])


def test_dev_inbox_is_measured_beside_the_sink(smoke: tuple[dict[str, Any], str]) -> None:
    """The dev-inbox workload (mail to bob@localhost stored in mailboxes, no relay) has
    a rate for jdxmail's inbox and for aiosmtpd's Sink, and its target a ratio."""
    results, _ = smoke
    for server in ("jdxmail inbox", "aiosmtpd Sink"):
        assert _figure(results, "1k-s20-inbox", server, "ingest")["median"] > 0
    assert _target(results, "dev inbox 1 KB x20")["value"] > 0


def test_fresh_spool_first_burst_is_compared_with_warmed(
    smoke: tuple[dict[str, Any], str],
) -> None:
    """A fresh spool's first burst and the same server's warmed rate are both measured,
    and the target is their ratio."""
    results, _ = smoke
    first = _figure(results, "1k-s20-fresh", "jdxmail fresh", "first")
    steady = _figure(results, "1k-s20-fresh", "jdxmail fresh", "steady")
    assert first["median"] > 0
    assert steady["median"] > 0
    target = _target(results, "fresh spool's first burst")
    assert target["value"] == pytest.approx(first["median"] / steady["median"])


def test_metrics_cost_is_measured_with_scrapes(smoke: tuple[dict[str, Any], str]) -> None:
    """jdxmail without its console runs beside the default one, whose /metrics the bench
    scraped during the run without a failure, and the target is on ÷ off."""
    results, report = smoke
    assert _figure(results, "1k-s20", "jdxmail bare", "ingest")["median"] > 0
    assert results["scrapes"]["ok"] > 0
    assert results["scrapes"]["failed"] == 0
    assert _target(results, "metrics on ÷ off, 1 KB")["value"] > 0
    assert "scrapes of /metrics" in report


def test_cpu_per_message_and_projection_are_reported(smoke: tuple[dict[str, Any], str]) -> None:
    """CPU milliseconds per relayed message are recorded for jdxmail (with the delivery
    process's part) and the CPU targets against Postfix and --workers 1 are listed."""
    results, report = smoke
    fig = _figure(results, "1k-s20", "jdxmail", "e2e")
    if not fig["median"]:
        pytest.skip(f"no end-to-end figure here: {fig['error']}")
    assert fig["cpu_ms"]
    assert fig["delivery_ms"]
    assert "ms/msg" in report
    assert "Postfix" in _target(results, "CPU per relayed message 1 KB x20")["note"]
    assert _target(results, "CPU per message, --workers 2 ÷ --workers 1")


def test_event_loop_rows_are_measured_or_skipped(smoke: tuple[dict[str, Any], str]) -> None:
    """The --loop asyncio/uvloop rows run when serve offers --loop and uvloop is there,
    else the report says why they were skipped."""
    results, report = smoke
    status = results["servers"].get("jdxmail uvloop", "")
    if status == "ok":
        assert _figure(results, "1k-s20", "jdxmail uvloop", "ingest")["median"] > 0
        assert _target(results, "--loop uvloop ÷ --loop asyncio, 1 KB")["value"] > 0
    else:
        assert status.startswith(("skipped", "unavailable"))
        assert f"jdxmail uvloop: {status}" in report


def test_projection_follows_the_stated_model() -> None:
    """The projection gives N cores ÷ (ingest + delivery CPU per message), capped by one
    core's worth of the delivery process, per machine and per core, and names the bound."""
    sys.path.insert(0, str(BENCH.parent))
    try:
        import run as bench_run  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(BENCH.parent))
    run = bench_run.Run("full", {}, "2026-12-04T00:00:00Z", "smtp-source", "smtp-sink", 5, 3.0)
    fig = run.figure("1k-s20", "jdxmail", "e2e")
    fig.rates, fig.cpu_ms, fig.delivery_ms = [1000.0], [1.0], [0.2]
    bench_run.project(run)
    rows = {row["cores"]: row for row in run.projection}
    assert rows[4]["msgs_per_s"] == pytest.approx(4000)
    assert rows[4]["bound"] == "all cores"
    assert rows[8]["msgs_per_s"] == pytest.approx(5000)
    assert rows[8]["bound"] == "the delivery process"
    assert rows[16]["msgs_per_s"] == pytest.approx(5000)
    assert rows[16]["per_core"] == pytest.approx(5000 / 16)


@pytest.mark.skipif(not HAVE_MATPLOTLIB, reason="needs matplotlib (pip install -e '.[bench]')")
def test_plot_is_drawn_and_redrawn_from_json(
    smoke: tuple[dict[str, Any], str], smoke_json: Path, tmp_path: Path
) -> None:
    """--plot writes a PNG of the run, and --plot-from redraws one from its --json file."""
    assert smoke_json.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = tmp_path / "again.png"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--plot-from", str(smoke_json), "--plot", str(again)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert again.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("script", "tool"),
    [
        ("deliver_probe.py", "smtp-sink"),
        ("ingest_probe.py", "smtp-source"),
        ("session_probe.py", None),
    ],
)
def test_probe_reports_rate_and_cpu_per_message(script: str, tool: str | None) -> None:
    """The probes (delivery alone against smtp-sink, ingest alone from smtp-source,
    the sessions without sockets) handle a few dozen messages and print rate and CPU
    per message."""
    if tool is not None and shutil.which(tool) is None:
        pytest.skip(f"needs {tool} (apt-get install postfix)")
    proc = subprocess.run(
        [sys.executable, str(BENCH.with_name(script)), "--count", "40", "--rounds", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "msgs/s, CPU per message:" in proc.stdout
    assert "µs user +" in proc.stdout


def test_held_servers_relay_sessions_outlast_the_run(tmp_path: Path) -> None:
    """The bench's held server (delivery stalled on purpose, "ingest alone" rows) gets a
    relay time-out of an hour, so its stalled sessions never time out and reschedule
    mail while it is measured; a relaying server keeps SmtpServer.TimeOut."""
    from jdxmail.settings.files import load_settings

    sys.path.insert(0, str(BENCH.parent))
    try:
        import peers  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(BENCH.parent))
    timeouts: dict[str, int] = {}
    for label, relays in (("held", False), ("relaying", True)):
        server = peers.JdxmailServe(tmp_path, 2525, label=label, relays=relays)
        config = tmp_path / f"{label}.json"
        config.write_text(json.dumps(server.config()))
        settings = load_settings(config, environ={}).settings
        (relay,) = settings.relays
        timeouts[label] = relay.time_out or settings.smtp_server.time_out
    assert timeouts == {"held": 3600, "relaying": 120}
