"""The README's one-minute tour runs as written, and its sample output is what jdxmail prints.

The blocks are read from README.md itself (those after a ``<!-- tour -->`` line), so the
README and this test cannot drift apart. The tour runs in a network namespace of its own
(only its loopback), so its fixed port 2525 never meets another test or a real server.
"""

from __future__ import annotations

import contextlib
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def tour_blocks() -> list[str]:
    """The shell blocks of the tour, in README order."""
    return re.findall(r"<!-- tour -->\n```sh\n(.*?)```", README, flags=re.DOTALL)


def validate_sample() -> str:
    """The README's sample output of `jdxmail validate-config` (without the prompt line)."""
    found = re.search(
        r"<!-- validate-config output -->\n```\n\$ jdxmail validate-config\n(.*?)```",
        README,
        flags=re.DOTALL,
    )
    assert found is not None, "README.md lost its validate-config sample"
    return found.group(1)


def _own_network_namespace() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-rn", "ip", "link", "set", "lo", "up"],
        capture_output=True,
        timeout=30,
        check=False,
    )
    return probe.returncode == 0


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """A folder that looks like a fresh clone after the set-up: .venv and examples/."""
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    return tmp_path


def test_readme_has_a_tour() -> None:
    """The tour blocks exist and start the server, add a user and validate the example."""
    script = "\n".join(tour_blocks())
    assert "jdxmail serve &" in script
    assert "cp examples/appsettings.json ." in script
    assert "jdxmail validate-config" in script


def _run_typing(command: list[str], cwd: Path, answers: list[tuple[bytes, bytes]]) -> Result:
    """Run *command* on a terminal of its own, typing each answer when its prompt shows.

    A hidden prompt is two writes: click's text (``Password:``) on stdout, then
    getpass's `` `` on the terminal, after it has turned off the echo and flushed
    pending input. So an answer is typed only once both have come: typed earlier, it
    would be flushed away. The output is stdout and stderr together, in order.
    """
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        command, cwd=cwd, stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    os.close(terminal)
    assert proc.stdout is not None
    output = proc.stdout.fileno()
    out, on_terminal, seen, deadline = b"", b"", 0, time.monotonic() + 60
    try:
        while True:
            left = max(0.0, deadline - time.monotonic())
            ready = select.select([output, controller], [], [], left)[0]
            if not ready:
                raise AssertionError(f"the tour hangs; its output so far:\n{out.decode()}")
            if controller in ready:
                with contextlib.suppress(OSError):  # EIO: every holder closed the terminal
                    on_terminal += os.read(controller, 65536)
            if output in ready:
                chunk = os.read(output, 65536)
                if not chunk:
                    break
                out += chunk
            if answers and answers[0][0] in out[seen:] and b" " in on_terminal:
                prompt, answer = answers.pop(0)
                seen = out.index(prompt, seen) + len(prompt)
                on_terminal = on_terminal.partition(b" ")[2]
                os.write(controller, answer)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stdout.close()
        os.close(controller)
    return Result(code, out.decode("utf-8", "replace"))


class Result(NamedTuple):
    """Exit code and output (stdout and stderr together) of a run."""

    returncode: int
    output: str


def test_readme_tour_runs_as_written(clone: Path) -> None:
    """Every command of the tour succeeds in order: no race with serve, no duplicate user."""
    if not _own_network_namespace():
        pytest.skip("needs unshare and ip to give the tour a loopback of its own")
    (clone / "tour.sh").write_text("set -e\n" + "\n".join(tour_blocks()), encoding="utf-8")
    result = _run_typing(
        ["unshare", "-rn", "bash", "-c", "ip link set lo up && exec bash tour.sh"],
        clone,
        # `jdxmail user add` asks for the password twice
        [(b"Password:", b"tour-secret-1\n"), (b"Repeat for confirmation:", b"tour-secret-1\n")],
    )
    report = result.output
    assert result.returncode == 0, report
    assert "✓ banner from 127.0.0.1:2525" in report
    assert list((clone / "data/smtp/mailbox/you@example.com").glob("*.eml")), report
    assert "added user 'me@example.test'" in report
    assert "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8" in report
    for wrong in ("Traceback", "internal error", "no such job", "already exists", "error:"):
        assert wrong not in report, report
    # the sample in the README is what validate-config prints for the tour's config
    shown = subprocess.run(
        [str(clone / ".venv/bin/jdxmail"), "validate-config"],
        check=False,
        cwd=clone,
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("JDXMAIL_")},
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == validate_sample()
