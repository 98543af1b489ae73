"""Checking downloaded image bytes against the hash Glance recorded, off the reading thread.

Which hash: the strongest Glance gives. Its "multihash" ``os_hash_algo`` /
``os_hash_value`` (sha512 unless the operator configured another) when this
Python can compute it, else the MD5 ``checksum`` every Glance records. That is
the order glanceclient checks them in, and the dom0 ``glance`` plug-in does the
same, so every image handler gives the operator the same guarantee. (MD5 only
catches accidents: collisions can be made on purpose.)

Why a thread: hashing is the most expensive part of a download (hundreds of
MB/s, against GB/s for loopback sockets and the page cache). glanceclient
hashes each chunk on the thread that reads the next one, so a download takes
*read + hash*. OpenSSL's ``hashlib`` releases the GIL on buffers over 2 KiB, so
hashing on a helper thread runs on another core while the reader reads and the
writer writes: a download takes about *max(read, hash)*.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from xenapi_driver.image import errors

LOG = logging.getLogger(__name__)
_END = object()


def _field(meta: dict[str, Any], name: str) -> Any:
    """A Glance field wherever Nova put it (top level for schema fields, else ``properties``)."""
    value = meta.get(name)
    if value is None:
        value = (meta.get("properties") or {}).get(name)
    return value


def expected_digest(meta: dict[str, Any]) -> tuple[str | None, str | None]:
    """``(algorithm, hex digest)`` to verify the image's bytes against; ``(None, None)`` if none."""
    algo = str(_field(meta, "os_hash_algo") or "").lower()
    value = _field(meta, "os_hash_value")
    if algo and value:
        if algo in hashlib.algorithms_available:
            return algo, str(value).lower()
        LOG.warning("Image %s: cannot compute Glance's %s hash here; checking its MD5", meta.get("id"), algo)
    checksum = _field(meta, "checksum")
    if checksum:
        return "md5", str(checksum).lower()
    return None, None


class Digest:
    """A hash computed on a helper thread: ``update`` queues immutable chunks, ``hexdigest`` waits."""

    def __init__(self, algo: str, depth: int = 8) -> None:
        self.algo = algo
        self._hash = hashlib.new(algo)
        self.error: Exception | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._thread: threading.Thread | None = threading.Thread(
            target=self._run, name=f"image-{algo}", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        while (chunk := self._queue.get()) is not _END:
            if self.error is None:
                try:
                    self._hash.update(chunk)
                except Exception as exc:  # noqa: BLE001 - keep draining so the reader never blocks
                    self.error = exc

    def update(self, chunk: bytes) -> None:
        self._queue.put(chunk)

    def hexdigest(self) -> str:
        """Wait until every queued chunk is hashed; the hex digest (a note when hashing failed)."""
        self.close()
        if self.error is not None:
            return f"(hashing failed: {self.error})"
        return self._hash.hexdigest()

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(_END)
            self._thread.join()
            self._thread = None


def verified(chunks: Iterable[bytes], meta: dict[str, Any]) -> Iterator[bytes]:
    """``chunks`` unchanged; after the last, ImageUnacceptable if they do not match Glance's hash.

    The error comes before the iterator ends, so a consumer that has sent
    every byte on still sees it before it reports success.
    """
    image_id = str(meta.get("id"))
    algo, expected = expected_digest(meta)
    if algo is None:
        LOG.warning("Glance records no checksum for image %s: its data is not verified", image_id)
        yield from chunks
        return
    digest = Digest(algo)
    try:
        for chunk in chunks:
            digest.update(chunk)
            yield chunk
    finally:
        got = digest.hexdigest()
    if got != expected:
        raise errors.bad_image(
            image_id, f"corrupt download: the data's {algo} is {got}, Glance recorded {expected}"
        )
    LOG.debug("Image %s: %s verified", image_id, algo)
