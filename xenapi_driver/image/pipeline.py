"""Overlap reading from one end of a transfer with writing to the other.

A transfer from Glance into XAPI (or back) otherwise alternates: read a
chunk, wait; send it, wait. Reading ahead on a plain thread into a small
bounded queue lets both connections stream at once, so the transfer takes
about as long as its slower side instead of the sum of both, while at most
``depth`` chunks are held in memory.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator

_END = object()


class ReadAhead:
    """Iterate ``chunks`` on a background thread, ``depth`` chunks ahead of the consumer."""

    def __init__(self, chunks: Iterable[bytes], depth: int = 16) -> None:
        self._source = iter(chunks)
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="image-read-ahead", daemon=True)
        self._thread.start()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for chunk in self._source:
                if not self._put(chunk):
                    return
            self._put(_END)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            self._put(exc)

    def __iter__(self) -> Iterator[bytes]:
        try:
            while True:
                item = self._queue.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.close()

    def cancel(self) -> None:
        """Ask the reader to stop without waiting (call before closing what it reads from)."""
        self._stop.set()

    def close(self) -> None:
        """Stop reading ahead (the consumer gave up); the source is closed when it can be."""
        self._stop.set()
        self._thread.join(timeout=5)
        close = getattr(self._source, "close", None)
        if close is not None and not self._thread.is_alive():
            try:
                close()
            except Exception:  # noqa: BLE001 - best effort
                pass
