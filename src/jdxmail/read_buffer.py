"""One read buffer shared by every connection of a kind (the SMTP server's, the relays').

asyncio's plain ``data_received`` path allocates a new bytes object for every read (up
to 256 KiB), which glibc serves with mmap and munmap: system calls and a page fault
per read. A :class:`SharedReadBuffer` protocol has the event loop read into one
preallocated buffer instead and hands on a view of just what arrived.
"""

from __future__ import annotations

import abc
import asyncio
from typing import ClassVar

__all__ = ["SharedReadBuffer"]


class SharedReadBuffer(asyncio.BufferedProtocol, abc.ABC):
    """A buffered protocol whose reads land in ``read_buffer``, one per class.

    A subclass sets ``read_buffer`` and takes each read in ``data_received``, which
    gets a view into the shared buffer: valid only until it returns, so whatever is
    kept must be copied. Sharing is safe because the event loop hands each read over
    (``buffer_updated``) before it starts the next one.
    """

    __slots__ = ()

    #: where the event loop reads into (recv_into), shared by every instance
    read_buffer: ClassVar[memoryview]

    def get_buffer(self, sizehint: int) -> memoryview:
        """Where the next read goes: the shared buffer."""
        return self.read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        """Hand what arrived to ``data_received``."""
        self.data_received(self.read_buffer[:nbytes])

    @abc.abstractmethod
    def data_received(self, data: memoryview) -> None:
        """Take one read (*data* is only valid during this call)."""
