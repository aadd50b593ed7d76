"""A long-running process keeps freed memory for its next messages (process.settle_heap)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from jdxmail.process import uses_glibc

# A child that handles two messages of 1 MiB (the most a session holds in memory):
# it prints the page faults the second one's block took.
_CHILD = textwrap.dedent(
    """
    import resource, sys
    if sys.argv[1] == "settled":
        from jdxmail.process import settle_heap
        settle_heap()
    def message():
        block = bytearray(1 << 20)
        block[::4096] = b"x" * 256
        return block
    first = message()
    del first
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    second = message()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


def _faults(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, mode], capture_output=True, text=True, check=True
    )
    return int(done.stdout)


@pytest.mark.skipif(not uses_glibc(), reason="glibc's malloc only")
def test_settled_process_reuses_a_freed_message_block_without_page_faults() -> None:
    """After settle_heap the next message's block is memory kept from the last one."""
    # by default glibc mapped the first block and unmapped it when freed, so the
    # second one's 256 pages are faulted in again
    assert _faults("default") >= 200
    assert _faults("settled") < 20
