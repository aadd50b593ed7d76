"""bench/run.py --smoke runs every available path and reports what it could not run.

This checks that the benchmark works, not its figures: the run uses tiny counts.
With Postfix's tools missing, the peers that need them must be reported as
unavailable (with the apt-get hint) while the jdxmail and aiosmtpd rows still run.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "run.py"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    """One ``--smoke`` run: its JSON results and its printed report."""
    out = tmp_path_factory.mktemp("bench") / "smoke.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--smoke", "--json", str(out)],
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
    assert all(t["status"] in ("met", "MISSED", "not measured") for t in results["targets"])
    memory = {(m["test"], m["server"]): m for m in results["memory"]}
    assert "error" not in memory[("idle", "jdxmail")]
    assert memory[("idle", "jdxmail")]["fds"] > memory[("idle", "jdxmail")]["baseline_fds"]
    assert "error" not in memory[("big", "jdxmail")]


@pytest.mark.parametrize(
    ("script", "tool"), [("deliver_probe.py", "smtp-sink"), ("ingest_probe.py", "smtp-source")]
)
def test_probe_reports_rate_and_cpu_per_message(script: str, tool: str) -> None:
    """The probes (delivery alone against smtp-sink, ingest alone from smtp-source)
    handle a few dozen messages and print rate and CPU per message."""
    if shutil.which(tool) is None:
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
