#!/usr/bin/env python3
"""First-boot and cached-boot time of an image, as ratios to baselines measured in the same run.

Why: booting from an image is dominated by moving its bytes once; after that,
the SR image cache must make every further boot a constant-time clone. Times
are machine-dependent, so each is reported as a ratio to a baseline measured
in the same run.

Set-up, all real parts: the XAPI simulator in its own process (subprocess
mode), the loopback Glance (``tests/glance_server.py``, recording MD5
``checksum`` and sha512 ``os_hash_value`` as Glance does) in its own process,
Nova's image API (glanceclient) in this one, the real dom0 ``glance`` plug-in
for ``direct_vhd`` (run by dom0's interpreter, Python 3.6 when the machine has
one). The image is a dynamic VHD (``vhd``/``bare``) with ``--fill`` of its
blocks allocated (random data).

Issue 7's goals: first boot within 1.3x of ``cp`` of the same bytes; cached
boot of the big image / cached boot of 64 MiB under 1.2.

What the first-boot goal means on a given machine: a first boot must also
*verify* the image against the hash Glance recorded (an operator expects
it; both handlers check Glance's ``os_hash_value``, sha512 by default, else
its MD5 ``checksum``), and nothing can hash faster than one core running
hashlib. ``cp`` through the page cache (copy_file_range) moves GB/s while
hashlib hashes at hundreds of MB/s, so where hashing is several times slower
than ``cp``, 1.3x ``cp`` cannot be met by any boot that verifies the image. So
each first boot is printed as ratios to three baselines of the same run:

* ``cp`` -- the issue's goal (1.3);
* the integrity floor, ``max(cp, hash)``: ``hash`` is one thread hashing the
  image's bytes (already in memory) with the algorithm that boot verifies, in
  the interpreter that verifies it (this one for ``vdi_remote_stream``; dom0's
  for ``direct_vhd``);
* the Glance fetch alone: reading and verifying the image with the image
  layer's fetch (``ImageAPI.chunks``: Nova's ``download``, glanceclient
  hashing on the reading thread), the part of a first boot no handler avoids.

A first boot also writes the image into the SR: the simulator's
``import_raw_vdi`` fsyncs what it wrote, as XAPI's import is durable, so ``cp``
followed by ``fsync`` of the copy is measured too (printed as ``cp+fsync``).
Each baseline and first boot is the best of ``--repeats``; run the
benchmark 2-3 times and report the spread, since other work on the machine
moves every number.

On the project's 2-core development VM (2026-11, ``--size 512M``: 269 MB of
image bytes), ``cp`` takes ~0.065 s, sha512 ~0.31 s in nova-compute's Python
3.11 and ~0.53 s in the simulator's dom0 Python 3.6 (built without OpenSSL's
hashlib, so with Python's slower built-in hashes; MD5 there: ~0.40 s). The
integrity floor is thus 5-8x ``cp``, and the 1.3x-``cp`` goal is out of reach
for any verifying boot; the ratio to the integrity floor is the one to
judge. ``direct_vhd`` waits for its plug-in through ``Async.host.call_plugin``
and the session's task polling (every 1/8 of the time the task has run,
20 ms to 1 s), so it sees the plug-in finish at most ~1/8 late.

Usage: ``python benchmarks/bench_image.py [--size 1G] [--fill 0.5] [--handler H ...] [--repeats N] [--json]``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import nova.conf  # noqa: E402
import nova.context  # noqa: E402

from nova import objects  # noqa: E402
from xenapi_driver import vhd  # noqa: E402
from xenapi_driver.image import ImageAPI, XenAPIImageSource  # noqa: E402
from xenapi_driver.session import XenAPISession  # noqa: E402
from xenapi_driver.simulator import api  # noqa: E402
from xenapi_driver.simulator.dom0 import dom0_python  # noqa: E402

CONF = nova.conf.CONF
MiB = 1024**2
TOKEN = "bench-token"
SMALL = 64 * MiB
#: Cached boots of each image (a cached boot takes milliseconds: the median of many).
CACHED_SAMPLES = 15

_GLANCE = """
import json, sys
sys.path.insert(0, sys.argv[1])
from tests.glance_server import GlanceServer
g = GlanceServer(token=sys.argv[2])
ids = {}
for path in sys.argv[3:]:
    with open(path, "rb") as handle:
        ids[path] = g.add(handle.read(), "vhd", "bare")
print(json.dumps({"endpoint": g.endpoint, "ids": ids}), flush=True)
sys.stdin.read()
"""


def parse_size(text: str) -> int:
    units = {"K": 1024, "M": MiB, "G": 1024 * MiB}
    text = text.strip().upper().rstrip("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def make_image(path: Path, size: int, fill: float) -> None:
    """A dynamic VHD of ``size`` with ``fill`` of its 2 MiB blocks written (random data)."""
    vhd.create_dynamic(str(path), size)
    blocks = size // vhd.BLOCK_SIZE
    chosen = sorted(random.Random(7).sample(range(blocks), max(1, int(blocks * fill))))
    with vhd.open_chain(str(path)) as chain:
        for block in chosen:
            chain.write(block * vhd.BLOCK_SIZE, os.urandom(vhd.BLOCK_SIZE))


def cp_time(src: Path, workdir: Path) -> float:
    dest = workdir / f"cp-{uuid.uuid4()}"
    start = time.perf_counter()
    subprocess.run(["cp", str(src), str(dest)], check=True)
    elapsed = time.perf_counter() - start
    dest.unlink()
    return elapsed


def cp_fsync_time(src: Path, workdir: Path) -> float:
    """``cp`` and then ``fsync`` of the copy: a durable copy, as an SR import is."""
    dest = workdir / f"cp-{uuid.uuid4()}"
    start = time.perf_counter()
    subprocess.run(["cp", str(src), str(dest)], check=True)
    fd = os.open(dest, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    elapsed = time.perf_counter() - start
    dest.unlink()
    return elapsed


_HASH = """
import hashlib, sys, time
with open(sys.argv[1], "rb") as handle:
    data = handle.read()
view = memoryview(data)
start = time.perf_counter()
digest = hashlib.new(sys.argv[2])
for offset in range(0, len(data), 1 << 20):
    digest.update(view[offset : offset + (1 << 20)])
digest.hexdigest()
print(time.perf_counter() - start)
"""


def hash_time(python: str, path: Path, algo: str) -> float:
    """One thread of ``python`` hashing the file's bytes (read into memory first) with ``algo``."""
    out = subprocess.run([python, "-c", _HASH, str(path), algo], check=True, capture_output=True, text=True)
    return float(out.stdout.strip())


def fetch_time(image_api: Any, context: Any, image_id: str) -> float:
    """Only reading (and verifying) the image from Glance, as the image layer does."""
    start = time.perf_counter()
    for _ in image_api.chunks(context, image_id):
        pass
    return time.perf_counter() - start


def expected_digest(meta: dict[str, Any]) -> tuple[str | None, str | None]:
    """The hash a boot verifies, in glanceclient's order: the multihash, else the MD5 checksum."""
    props = meta.get("properties") or {}
    algo = meta.get("os_hash_algo") or props.get("os_hash_algo")
    value = meta.get("os_hash_value") or props.get("os_hash_value")
    if algo and value and algo.lower() in hashlib.algorithms_available:
        return algo.lower(), value.lower()
    if meta.get("checksum"):
        return "md5", meta["checksum"]
    return None, None


def boot(source: XenAPIImageSource, context: Any, sr_ref: str, image_id: str) -> float:
    instance = objects.Instance(id=random.randint(1, 1 << 30), uuid=str(uuid.uuid4()))
    meta = objects.ImageMeta.from_dict({"id": image_id})
    start = time.perf_counter()
    source.root_vdi(context, instance, meta, sr_ref)
    return time.perf_counter() - start


def run(size: int, fill: float, handlers: list[str], repeats: int) -> dict[str, Any]:
    objects.register_all()
    workdir = Path(tempfile.mkdtemp(prefix="bench-image-"))
    glance = sim = None
    try:
        big, small = workdir / "big.vhd", workdir / "small.vhd"
        make_image(big, size, fill)
        make_image(small, SMALL, fill)
        glance = subprocess.Popen(
            [sys.executable, "-c", _GLANCE, str(ROOT), TOKEN, str(big), str(small)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        info = json.loads(glance.stdout.readline())
        sim = api.start(hosts=1, subprocess=True, state_dir=workdir / "sim")
        host = sim.pools[0].hosts[0]
        CONF([], project="nova")
        CONF.set_override("api_servers", [info["endpoint"]], group="glance")
        for name, value in {
            "connection_url": host.url,
            "connection_username": sim.username,
            "connection_password": sim.password,
            "cache_images": "all",
        }.items():
            CONF.set_override(name, value, group="xenserver")
        context = nova.context.RequestContext("u", "p", auth_token=TOKEN, is_admin=False)
        session = XenAPISession.from_conf()
        sr_ref = host.local_sr
        results: dict[str, Any] = {
            "image_bytes": big.stat().st_size,
            "virtual_size": size,
            "fill": fill,
            "handlers": {},
        }
        big_id, small_id = info["ids"][str(big)], info["ids"][str(small)]
        image_api = ImageAPI()
        algo, _ = expected_digest(image_api.get(context, big_id))
        results["verified_hash"] = algo
        pythons = {"vdi_remote_stream": sys.executable, "vdi_local_dev": sys.executable}
        pythons["direct_vhd"] = dom0_python()
        for handler in handlers:
            CONF.set_override("image_handler", handler, group="xenserver")
            source = XenAPIImageSource(session)
            python = pythons[handler]
            firsts, cps, cp_syncs, hashes, fetches = [], [], [], [], []
            for _ in range(repeats):
                cps.append(cp_time(big, workdir))
                cp_syncs.append(cp_fsync_time(big, workdir))
                hashes.append(hash_time(python, big, algo) if algo else 0.0)
                fetches.append(fetch_time(image_api, context, big_id))
                # A fresh cache entry each round: forget the previous one.
                for ref in source.cache.entries(sr_ref):
                    session.call_xenapi("VDI.set_other_config", ref, {})
                firsts.append(boot(source, context, sr_ref, big_id))
            boot(source, context, sr_ref, small_id)  # warm the small image's cache
            cached_big, cached_small = [], []
            for _ in range(CACHED_SAMPLES):  # alternating, so drift in the machine's load hits both alike
                cached_big.append(boot(source, context, sr_ref, big_id))
                cached_small.append(boot(source, context, sr_ref, small_id))
            first, cp, hashed, fetch = min(firsts), min(cps), min(hashes), min(fetches)
            floor = max(cp, hashed)
            results["handlers"][handler] = {
                "first_boot_s": round(first, 4),
                "first_boots_s": [round(t, 4) for t in firsts],
                "cp_s": round(cp, 4),
                "cp_fsync_s": round(min(cp_syncs), 4),
                "hash_s": round(hashed, 4),
                "hash_python": python,
                "integrity_floor_s": round(floor, 4),
                "glance_fetch_s": round(fetch, 4),
                "first_boot_ratio_to_cp": round(first / cp, 2),
                "first_boot_ratio_to_integrity_floor": round(first / floor, 2),
                "first_boot_ratio_to_glance_fetch": round(first / fetch, 2),
                "cached_boot_big_s": round(statistics.median(cached_big), 4),
                "cached_boot_64MiB_s": round(statistics.median(cached_small), 4),
                "cached_ratio_big_to_64MiB": round(
                    statistics.median(cached_big) / statistics.median(cached_small), 2
                ),
            }
        session.close()
        return results
    finally:
        if sim is not None:
            sim.stop()
        if glance is not None:
            glance.stdin.close()
            glance.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="1G", help="virtual size of the big image (default 1G)")
    parser.add_argument(
        "--fill", type=float, default=0.5, help="fraction of blocks holding data (default 0.5)"
    )
    parser.add_argument(
        "--handler", action="append", choices=["direct_vhd", "vdi_remote_stream", "vdi_local_dev"],
        help="image handler(s) to measure (default: direct_vhd and vdi_remote_stream)",
    )  # fmt: skip
    parser.add_argument("--repeats", type=int, default=2, help="first boots per handler (best is kept)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = run(
        parse_size(args.size), args.fill, args.handler or ["direct_vhd", "vdi_remote_stream"], args.repeats
    )
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(
        f"image: {results['image_bytes']} bytes (virtual {results['virtual_size']}, fill {results['fill']}); "
        f"boots verify its {results['verified_hash']}"
    )
    for handler, r in results["handlers"].items():
        which = "dom0's" if handler == "direct_vhd" else "this"
        print(
            f"{handler:18} first boot {r['first_boot_s']:.3f}s = {r['first_boot_ratio_to_cp']:.2f}x cp "
            f"({r['cp_s']:.3f}s; cp+fsync {r['cp_fsync_s']:.3f}s) [goal 1.3]; "
            f"{r['first_boot_ratio_to_integrity_floor']:.2f}x the integrity "
            f"floor max(cp, {results['verified_hash']} in {which} Python {r['hash_s']:.3f}s); "
            f"{r['first_boot_ratio_to_glance_fetch']:.2f}x the Glance fetch alone "
            f"({r['glance_fetch_s']:.3f}s)"
        )
        print(
            f"{'':18} cached boot {r['cached_boot_big_s'] * 1000:.1f} ms vs "
            f"{r['cached_boot_64MiB_s'] * 1000:.1f} ms for 64 MiB = "
            f"{r['cached_ratio_big_to_64MiB']:.2f} [goal 1.2]"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
