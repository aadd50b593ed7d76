"""Size thresholds of the server and the queue, in one place, each with its reason."""

from __future__ import annotations

__all__ = ["SPARE_MAX_SIZE"]

#: delivered queue files up to this size are kept in spare/ for reuse (bigger ones
#: are rare and would hold much disk space)
SPARE_MAX_SIZE = 256 * 1024
