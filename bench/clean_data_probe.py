"""Microseconds per call of the server's data checks on one 100 KB message.

Usage::

    python bench/clean_data_probe.py [--size 100000] [--repeat 7] [--number 300]

Times ``clean_data`` (as the DATA reader calls it) and its parts on three bodies of
*size* bytes: base64 lines (an attachment), short text lines with dots (prose), and
``smtp-source``'s lines. Best of *repeat* timings of *number* calls each, so that a
shared machine's noise is mostly left out; compare runs of two trees in interleaved
pairs (``PYTHONPATH=<tree>/src``).
"""

from __future__ import annotations

import argparse
import base64
import random
import timeit
from collections.abc import Callable
from functools import partial

from jdxmail.data_encoding import has_bare_line_ending
from jdxmail.server import smtp


def _bodies(size: int) -> dict[str, bytearray]:
    rng = random.Random(15)  # noqa: S311 (test data, not secrets)
    header = b"Subject: probe\r\nFrom: a@example.test\r\n\r\n"
    encoded = base64.encodebytes(rng.randbytes(size * 3 // 4)).replace(b"\n", b"\r\n")
    words = [b"the", b"quick", b"brown", b"fox.", b"jumps", b"over", b"a", b"lazy", b"dog,"]
    lines: list[bytes] = []
    total = 0
    while total < size:
        line = b" ".join(rng.choice(words) for _ in range(rng.randint(1, 14)))
        if rng.random() < 0.05:
            line = b"." + line  # stuffed: a line that starts with a dot
        lines.append(line)
        total += len(line) + 2
    text = b"\r\n".join(lines) + b"\r\n"
    source = b"La La La La La La La La La La La La La La La La La La La La La La La La La\r\n"
    return {
        "base64": bytearray((header + encoded)[:size].rsplit(b"\r\n", 1)[0] + b"\r\n"),
        "text": bytearray(header + text[:size].rsplit(b"\r\n", 1)[0] + b"\r\n"),
        "source": bytearray(header + source * (size // len(source))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--number", type=int, default=300)
    args = parser.parse_args()
    for name, body in _bodies(args.size).items():
        dot_lines = body.find(b"\r\n.") >= 0
        calls: dict[str, Callable[[], object]] = {
            "clean_data": partial(smtp.clean_data, body, normalize=False, dot_lines=dot_lines),
            "has_bare_line_ending": partial(has_bare_line_ending, body),
            "_has_long_line": partial(smtp._has_long_line, body),
        }
        figures = []
        for label, call in calls.items():
            best = min(timeit.repeat(call, number=args.number, repeat=args.repeat))
            figures.append(f"{label} {best / args.number * 1e6:6.1f}")
        print(f"{name:7} " + "  ".join(figures) + "  µs")


if __name__ == "__main__":
    main()
