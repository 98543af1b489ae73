"""Helpers for the VHD tests: an independent byte model and a libvhdi chain reader."""

import os
import random

MiB = 1024 * 1024


class Model:
    """The expected contents of a virtual disk, maintained independently of the library."""

    def __init__(self, size: int):
        self.data = bytearray(size)

    def write(self, offset: int, data: bytes) -> None:
        self.data[offset : offset + len(data)] = data

    def copy(self) -> "Model":
        other = Model(0)
        other.data = bytearray(self.data)
        return other


def random_writes(chain, model, rng: random.Random, count: int, *, aligned: int = 4096, max_len=256 * 1024):
    """Apply ``count`` random writes to both the chain and the model."""
    size = len(model.data)
    for _ in range(count):
        length = (
            rng.randrange(1, max_len // aligned + 1) * aligned if aligned > 1 else rng.randrange(1, max_len)
        )
        offset = (
            rng.randrange(0, (size - length) // aligned + 1) * aligned
            if aligned > 1
            else rng.randrange(0, size - length)
        )
        data = rng.randbytes(length)
        chain.write(offset, data)
        model.write(offset, data)


def pyvhdi_read_chain(paths):
    """Read a chain (leaf first) with libvhdi, giving each level its parent; returns bytes."""
    import pyvhdi

    handles = []
    for path in reversed(paths):
        handle = pyvhdi.file()
        handle.open(os.fspath(path))
        if handles:
            handle.set_parent(handles[-1])
        handles.append(handle)
    leaf = handles[-1]
    try:
        return leaf.read_buffer_at_offset(leaf.get_media_size(), 0)
    finally:
        for handle in reversed(handles):
            handle.close()
