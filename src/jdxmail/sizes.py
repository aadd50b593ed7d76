"""Size thresholds of the server and the queue, in one place, each with its reason.

Protocol limits (line lengths, RFC 5321) stay beside the code that enforces them;
these are the sizes where the code changes how it works, to bound memory or to keep
the event loop from waiting.
"""

from __future__ import annotations

__all__ = [
    "CLEAN_ON_LOOP_LIMIT",
    "KEEP_IN_FILE_OVER",
    "LOOP_WRITE_LIMIT",
    "READ_HIGH_WATER",
    "RECV_BUFFER_SIZE",
    "RELAY_RECV_BUFFER_SIZE",
    "SPARE_MAX_SIZE",
    "SPILL_THRESHOLD",
]

KIB = 1024
MIB = 1024 * KIB

#: client input read at once (asyncio's own reads are this size too)
RECV_BUFFER_SIZE = 256 * KIB
#: a session stops reading once this much input waits, and resumes at half of it
READ_HIGH_WATER = 256 * KIB
#: DATA past this many bytes goes to a file in the spool's tmp/ as it arrives (bounds
#: a session's memory)
SPILL_THRESHOLD = 1 * MIB
#: data up to this size is checked on the event loop; scanning megabytes takes
#: milliseconds, so bigger data is checked in a thread
CLEAN_ON_LOOP_LIMIT = 1 * MIB
#: messages up to this size are written to tmp/ by the event loop itself (page-cache
#: writes of microseconds); bigger ones by the spool's sync thread
LOOP_WRITE_LIMIT = 1 * MIB
#: delivered queue files up to this size are kept in spare/ for reuse (bigger ones
#: are rare and would hold disk space)
SPARE_MAX_SIZE = 256 * KIB
#: queued messages bigger than this are sent from their spool file in pieces
KEEP_IN_FILE_OVER = 1 * MIB
#: relay replies read at once (they are short)
RELAY_RECV_BUFFER_SIZE = 16 * KIB
