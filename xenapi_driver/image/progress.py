"""Progress of a transfer, logged at least every 10 percent.

Image transfers take minutes; an operator watching the log must see that
bytes still flow (and how fast) without one line per chunk.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator

LOG = logging.getLogger(__name__)


class Progress:
    """Counts bytes of a transfer of ``total`` bytes (0 = unknown) and logs every ``step`` percent."""

    def __init__(self, what: str, total: int, *, step: int = 10, log: logging.Logger = LOG) -> None:
        self.what = what
        self.total = max(int(total or 0), 0)
        self.step = step
        self.done = 0
        self._log = log
        self._next = step
        self._started = time.monotonic()
        self._next_unknown = 64 * 1024 * 1024
        self._log.info("%s: starting (%s bytes)", what, self.total or "unknown")

    def add(self, n: int) -> None:
        self.done += n
        if self.total:
            percent = self.done * 100 // self.total
            if percent >= self._next and percent < 100:
                self._log.info("%s: %d%% (%d of %d bytes)", self.what, percent, self.done, self.total)
                self._next = (percent // self.step + 1) * self.step
        elif self.done >= self._next_unknown:
            self._log.info("%s: %d bytes so far", self.what, self.done)
            self._next_unknown *= 2

    def finish(self) -> None:
        elapsed = max(time.monotonic() - self._started, 1e-6)
        self._log.info(
            "%s: 100%% (%d bytes in %.1f s, %.1f MiB/s)",
            self.what,
            self.done,
            elapsed,
            self.done / elapsed / 1048576,
        )

    def wrap(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """Pass ``chunks`` through, counting them."""
        for chunk in chunks:
            self.add(len(chunk))
            yield chunk
