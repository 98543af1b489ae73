"""VHD chain throughput, as ratios to reading the same bytes from a plain file in the same run.

Builds a chain of depth 3 (a full dynamic base, a middle snapshot touching a
quarter of the blocks, a leaf touching an eighth, partly overlapping), then
measures:

* sequential read of the whole virtual disk through the chain (2 MiB reads),
* export of the differential VHD stream of the leaf against the base,

each against reading the same amount of data from a plain raw file with the
same request size into the same kind of buffer (page-aligned, reused).
Goal: ratio >= 0.8.

Both sides read from a warm page cache, so the ratio measures our code, not
the disk.  The cache is warmed the same way for every file: each file is
synced, dropped from the cache (``posix_fadvise(DONTNEED)``) and read once
sequentially, so its pages come back through the kernel's readahead.  That is
also the state an export meets in XenServer, where blktap writes VHDs with
O_DIRECT (the writer leaves nothing in the cache).  Without this the
comparison depends on how the benchmark happened to write each file: the
plain file, written by 2 MiB-aligned 2 MiB writes, sits in the cache wholly
as 2 MiB folios, while VHD block data (4 KiB-aligned, after a 512-byte
bitmap) written by the library is cached in folios of 1 MiB and less (as
measured through /proc/kpageflags; after the rewarm every file is 88-97%
2 MiB folios), which costs the VHD side 5-8% for reasons that have
nothing to do with the VHD code (``--cache as-written`` measures that case).
Timed runs alternate between the two sides; the ratio is of the best time of
each, and the median of the per-round ratios shows how much load moved it.

    .venv/bin/python benchmarks/bench_vhd.py            # 1 GiB
    .venv/bin/python benchmarks/bench_vhd.py --size-mib 128
    .venv/bin/python benchmarks/bench_vhd.py --cache as-written
"""

from __future__ import annotations

import argparse
import mmap
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from xenapi_driver import vhd  # noqa: E402

MiB = 1024 * 1024
BLOCK = 2 * MiB


class Sink:
    """A write-only file object that discards (like streaming to a fast socket)."""

    def __init__(self):
        self.count = 0

    def write(self, data) -> int:
        n = len(data)
        self.count += n
        return n


def build(directory: str, size: int) -> tuple[str, str, str]:
    base = os.path.join(directory, "base.vhd")
    mid = os.path.join(directory, "mid.vhd")
    leaf = os.path.join(directory, "leaf.vhd")
    pattern = os.urandom(BLOCK + 4096)
    vhd.create_dynamic(base, size)
    with vhd.open_chain(base) as chain:
        for i, off in enumerate(range(0, size, BLOCK)):
            start = (i * 4093) % 4096
            chain.write(off, pattern[start : start + BLOCK])
    vhd.snapshot(mid, base)
    with vhd.open_chain(mid) as chain:
        for off in range(0, size, 4 * BLOCK):
            chain.write(off, pattern[:MiB])  # half of every 4th block
    vhd.snapshot(leaf, mid)
    with vhd.open_chain(leaf) as chain:
        for off in range(0, size, 8 * BLOCK):
            chain.write(off + 512 * 1024, pattern[7:65543])  # 64 KiB inside every 8th block
            chain.write(off + 3 * BLOCK, pattern[:BLOCK])  # whole blocks too
    return base, mid, leaf


def rewarm(paths: list[str]) -> None:
    """Drop each file from the page cache and read it back sequentially (see the module doc)."""
    buf = mmap.mmap(-1, MiB)
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)  # DONTNEED only drops clean pages
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            while os.readv(fd, [buf]):
                pass
        finally:
            os.close(fd)


def time_pair(ours, plain, repeat: int) -> tuple[float, float, float]:
    """Best time of each side, and the median of the per-round ratios.

    The sides alternate, so both see the same machine load; on a shared
    machine the best of many runs is the closest to what each side costs, and
    the median ratio of adjacent runs shows how far load moved it.
    """
    best_ours = best_plain = float("inf")
    ratios = []
    for _ in range(repeat):
        start = time.perf_counter()
        plain()
        t_plain = time.perf_counter() - start
        start = time.perf_counter()
        ours()
        t_ours = time.perf_counter() - start
        best_plain = min(best_plain, t_plain)
        best_ours = min(best_ours, t_ours)
        ratios.append(t_plain / t_ours)
    return best_ours, best_plain, statistics.median(ratios)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="virtual size in MiB (default 1024)")
    parser.add_argument("--repeat", type=int, default=40, help="timed runs per measurement (best is kept)")
    parser.add_argument("--dir", default=None, help="scratch directory (default: a new temporary one)")
    parser.add_argument(
        "--cache",
        choices=("rewarm", "as-written"),
        default="rewarm",
        help="rewarm (default): drop every file from the page cache and read it back the same way; "
        "as-written: keep the pages the writes left behind",
    )
    args = parser.parse_args(argv)
    size = max(args.size_mib, 16) // 16 * 16 * MiB
    directory = tempfile.mkdtemp(prefix="bench_vhd_", dir=args.dir)
    try:
        print(
            f"building a depth-3 chain of {size // MiB} MiB in {directory} (cache: {args.cache}) ...",
            flush=True,
        )
        base, mid, leaf = build(directory, size)
        raw_path = os.path.join(directory, "plain.raw")
        with open(raw_path, "wb") as out:
            vhd.export_raw(leaf, out)
        if args.cache == "rewarm":
            rewarm([base, mid, leaf, raw_path])
        fd = os.open(raw_path, os.O_RDONLY)
        try:

            def plain_read(offsets):
                total = 0
                for off in offsets:
                    total += len(os.pread(fd, BLOCK, off))
                return total

            all_offsets = range(0, size, BLOCK)

            with vhd.open_chain(leaf, writable=False) as chain:

                def chain_read():
                    for off in all_offsets:
                        chain.read(off, BLOCK)

                # Correctness spot check and cache warm-up.
                for off in (0, 3 * BLOCK, size - BLOCK):
                    assert chain.read(off, BLOCK) == os.pread(fd, BLOCK, off)
                buf = mmap.mmap(-1, BLOCK)  # one page-aligned buffer shared by both sides

                def chain_readinto():
                    for off in all_offsets:
                        chain.readinto(off, buf)

                def plain_readinto():
                    for off in all_offsets:
                        os.preadv(fd, [buf], off)

                chain_read()
                plain_read(all_offsets)
                reads = time_pair(chain_read, lambda: plain_read(all_offsets), args.repeat)
                reads_into = time_pair(chain_readinto, plain_readinto, args.repeat)

            sink = Sink()
            vhd.export_vhd_stream(leaf, sink, base_path=base)
            delta_bytes = sink.count
            delta_blocks = (delta_bytes - 512 * 3 - 1024) // (BLOCK + 512)
            with vhd.open_chain(leaf, writable=False) as chain:
                changed = sorted(set().union(*(set(layer.allocated_blocks()) for layer in chain.layers[:-1])))
            assert len(changed) == delta_blocks, (len(changed), delta_blocks)
            delta_offsets = [b * BLOCK for b in changed]

            delta_buf = mmap.mmap(-1, BLOCK)  # the best case for a plain reader: page-aligned

            def plain_delta():
                out = Sink()
                for off in delta_offsets:
                    os.preadv(fd, [delta_buf], off)
                    out.write(delta_buf)

            exports = time_pair(
                lambda: vhd.export_vhd_stream(leaf, Sink(), base_path=base), plain_delta, args.repeat
            )
        finally:
            os.close(fd)

        def line(name, nbytes, times):
            t_ours, t_base, median = times
            ratio = t_base / t_ours
            verdict = "ok" if ratio >= 0.8 else "BELOW GOAL"
            print(
                f"{name:<31} {nbytes / MiB:5.0f} MiB  ours {nbytes / MiB / t_ours:6.0f} MiB/s  "
                f"plain {nbytes / MiB / t_base:6.0f} MiB/s  ratio {ratio:4.2f} "
                f"(median of rounds {median:4.2f})  {verdict}"
            )
            return ratio

        r1 = line("read(), chain depth 3 vs pread", size, reads)
        r2 = line("readinto(), depth 3 vs preadv", size, reads_into)
        r3 = line("differential VHD stream export", len(delta_offsets) * BLOCK, exports)
        return 0 if min(r1, r2, r3) >= 0.8 else 1
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
