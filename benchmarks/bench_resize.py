#!/usr/bin/env python3
"""Resize / cold migration: transfer rate, downtime and bytes after power-off, as ratios in one run.

Why: the point of copying the immutable parents while the guest runs is that
the guest is down only while its leaf moves. Three ratios check that, each
against a baseline measured in the same run on the same machine (two
simulated hosts in different pools, real VHD files, real rsync over the
destination dom0's loopback OpenSSH):

1. chain rate / plain rsync rate: the whole migration (snapshot, per-file
   ``transfer_vhd`` through XAPI's host.call_plugin, power-off, leaf) against
   one plain ``rsync -a`` of the same VHD files over the same SSH trust.
   Goal (issue 8): 0.9 or better.
2. downtime(big base) / downtime(small base): from the power-off request to
   the destination VM running, for a base of BIG MiB and of SMALL MiB of
   data, both with the same LEAF MiB leaf. Goal: under 1.2.
3. bytes sent after power-off / leaf data: rsync's literal bytes of the leaf
   copies against the guest's writes since the snapshot. Goal: under 1.05.

Write-back: the page cache holds what was just written (the 1 GiB base
made for the run, the chain the previous run received) and the kernel
flushes it while the next timed copy runs, which moved the rate ratio
between 0.86 and 1.35 from one run to the next. So the file system is
synced before each timed part: before the migration's copy starts, before
the plain rsync, and at power-off (between the parents and the leaf, a part
neither timed copy nor the downtime includes), so every timed copy starts
from the same state.

Usage: ``python benchmarks/bench_resize.py [--small] [--json] [--repeat N]``
(``--small``: 256 MiB vs 32 MiB bases, 16 MiB leaf; default 1 GiB vs 128 MiB, 64 MiB leaf;
``--repeat N`` runs each size N times, alternating, and reports medians).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "resize"))

import nova.conf  # noqa: E402
from resize_helpers import Compute, flavor, make_instance  # noqa: E402

from nova import objects  # noqa: E402
from xenapi_driver import vhd  # noqa: E402
from xenapi_driver.simulator import api  # noqa: E402

CONF = nova.conf.CONF
MiB = 1024**2
GiB = 1024**3
objects.register_all()


def fill(path: Path, mib: int, seed: int) -> None:
    """Write ``mib`` MiB of incompressible data at the start of the disk's leaf."""
    block = os.urandom(4 * MiB)
    with vhd.open_chain(str(path)) as chain:
        for n in range(mib // 4):
            chain.write(n * 4 * MiB, block[: 4 * MiB - 8] + n.to_bytes(4, "big") + seed.to_bytes(4, "big"))


class BaseImage:
    """A root disk whose image base holds ``base_mib`` of data (a hidden parent, as Glance VHDs arrive)."""

    def __init__(self, compute: Compute, base_mib: int) -> None:
        self.compute, self.base_mib = compute, base_mib

    def root_vdi(self, context: Any, instance: Any, image_meta: Any, sr_ref: str) -> str:
        s = self.compute.session
        size = max(GiB, self.base_mib * MiB)
        record = {"name_label": "image", "SR": sr_ref, "virtual_size": str(size), "type": "user",
                  "sharable": False, "read_only": False, "other_config": {}}  # fmt: skip
        vdi = s.call_xenapi("VDI.create", record)
        fill(_path(self.compute, vdi), self.base_mib, 1)
        s.call_xenapi("VDI.destroy", s.call_xenapi("VDI.snapshot", vdi, {}))
        return vdi


def _path(compute: Compute, vdi: str) -> Path:
    from xenapi_driver.simulator.handlers import storage

    return storage.disk_path(compute.pool, vdi)


def run_once(src: Compute, dst: Compute, base_mib: int, leaf_mib: int) -> dict[str, float]:
    src.vmops.image_source = BaseImage(src, base_mib)
    inst = make_instance(flavor("bench", root_gb=max(1, base_mib // 1024)))
    src.spawn(inst)
    _vdi, path = src.root(inst)
    os.sync()  # the base just written is not flushed during the timed copy (module docstring)
    marks: dict[str, float] = {}

    def hook(step: str) -> None:
        if step == "copy_parent" and "copy_start" not in marks:
            marks["copy_start"] = time.monotonic()
        if step == "power_off":
            marks["parents_done"] = time.monotonic()
            fill(path, leaf_mib, 2)  # the guest's writes while its parents were copied
            os.sync()  # see "Write-back" in the module docstring
            marks["power_off"] = time.monotonic()
        if step == "copy_leaf" and "leaf_start" not in marks:
            marks["leaf_start"] = time.monotonic()

    src.migrateops.step_hook = hook
    start = time.monotonic()
    disk_info = src.migrateops.migrate_disk_and_power_off(None, inst, dst.host.address, inst.flavor, [])
    migrated = time.monotonic()
    dst.migrateops.finish_migration(None, None, inst, disk_info, [], None, False, power_on=True)
    running = time.monotonic()
    info = json.loads(disk_info)
    stats = info["disks"][0]["stats"]
    files = [p for p in src.host.sandbox.sr_path().iterdir() if p.suffix == ".vhd"]
    result = {
        "copy_seconds": (marks["parents_done"] - marks["copy_start"]) + (migrated - marks["leaf_start"]),
        "migrate_seconds": migrated - start - (marks["power_off"] - marks["parents_done"]),
        "downtime_seconds": running - marks["power_off"],
        "leaf_literal_bytes": stats["0"].get("literal_bytes", 0),
        "chain_bytes": sum(s.get("file_size", 0) for s in stats.values()),
        "files": [str(p) for p in files if p.stem in _chain_uuids(src, info, inst)],
    }
    return result, inst


def _chain_uuids(src: Compute, info: dict, inst: Any) -> set[str]:
    kept, _ = src.migrateops._kept(inst)  # noqa: SLF001 - benchmark introspection
    uuids = set()
    for vbd in src.session.call_xenapi("VM.get_VBDs", kept):
        vdi_uuid = src.session.call_xenapi("VDI.get_uuid", src.session.call_xenapi("VBD.get_VDI", vbd))
        current: str | None = vdi_uuid
        while current:
            uuids.add(current)
            ref = src.session.call_xenapi("VDI.get_by_uuid", current)
            current = src.session.call_xenapi("VDI.get_sm_config", ref).get("vhd-parent")
    return uuids


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-field median of several runs (files: the first run's)."""
    merged: dict[str, Any] = {"files": runs[0]["files"]}
    for key in runs[0]:
        if key != "files":
            merged[key] = statistics.median(r[key] for r in runs)
    return merged


def plain_rsync(src: Compute, dst: Compute, files: list[str]) -> float:
    """One plain rsync of the same files over the same SSH trust (the baseline)."""
    config = src.host.sandbox.ssh_dir / "config"
    target = f"root@{dst.host.address}:/images/plain-rsync/"
    dst.host.sandbox.path("/images/plain-rsync").mkdir(parents=True, exist_ok=True)
    argv = ["rsync", "--archive", "--partial", "--no-whole-file", "-e", f"ssh -F {config}", *files, target]
    os.sync()  # as before the migration's copy: no earlier write-back competes
    start = time.monotonic()
    subprocess.run(argv, check=True, timeout=900, capture_output=True)
    elapsed = time.monotonic() - start
    subprocess.run(["rm", "-rf", str(dst.host.sandbox.path("/images/plain-rsync"))], check=True)
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="256/32 MiB bases, 16 MiB leaf (quick)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each size (medians are reported)")
    args = parser.parse_args(argv)
    big, small, leaf = (256, 32, 16) if args.small else (1024, 128, 64)

    sim = api.start(hosts=[1, 1])
    try:
        src_host, dst_host = sim.pools[0].hosts[0], sim.pools[1].hosts[0]
        dst_host.sandbox.start_sshd(dst_host.address)
        src_host.sandbox.trust(dst_host.sandbox)
        overrides = {
            "connection_url": src_host.url,
            "connection_username": sim.username,
            "connection_password": sim.password,
            "migration_transport": "rsync",
        }
        for name, value in overrides.items():
            CONF.set_override(name, value, group="xenserver")
        src, dst = Compute(sim, sim.pools[0], src_host), Compute(sim, sim.pools[1], dst_host)
        try:
            runs: dict[int, list[dict[str, Any]]] = {big: [], small: []}
            plains = []
            # Alternate big and small so that machine load affects both alike; medians.
            for _ in range(args.repeat):
                for base in (big, small):
                    run, inst = run_once(src, dst, base, leaf)
                    if base == big:
                        plains.append(plain_rsync(src, dst, run["files"]))
                    runs[base].append(run)
                    src.migrateops.confirm_migration(None, None, inst, [])
                    dst.vmops.destroy(inst, [])
            big_run, small_run = _median(runs[big]), _median(runs[small])
            plain = statistics.median(plains)
        finally:
            src.close()
            dst.close()
    finally:
        dst_host.sandbox.stop_sshd()
        sim.stop()

    results = {
        "sizes_mib": {"big_base": big, "small_base": small, "leaf": leaf},
        "big": {k: v for k, v in big_run.items() if k != "files"},
        "small": {k: v for k, v in small_run.items() if k != "files"},
        "plain_rsync_seconds": plain,
        "ratios": {
            # rate ratio = plain time / chain time for the same bytes
            "chain_copy_rate_vs_plain_rsync": plain / big_run["copy_seconds"],
            "whole_migration_rate_vs_plain_rsync": plain / big_run["migrate_seconds"],
            "downtime_big_vs_small_base": big_run["downtime_seconds"] / small_run["downtime_seconds"],
            "bytes_after_power_off_vs_leaf": big_run["leaf_literal_bytes"] / (leaf * MiB),
        },
        "goals": {
            "chain_copy_rate_vs_plain_rsync": ">= 0.9",
            "downtime_big_vs_small_base": "< 1.2",
            "bytes_after_power_off_vs_leaf": "< 1.05",
        },
    }
    if args.json:
        print(json.dumps(results, indent=2, sort_keys=True))
    else:
        r = results["ratios"]
        print(f"bases {big} MiB vs {small} MiB, leaf {leaf} MiB (rsync over loopback OpenSSH)")
        copy, whole = big_run["copy_seconds"], big_run["migrate_seconds"]
        print(f"  chain copy {copy:.2f} s, plain rsync {plain:.2f} s: "
              f"rate ratio {r['chain_copy_rate_vs_plain_rsync']:.2f} (goal >= 0.9); whole migration "
              f"{whole:.2f} s: {r['whole_migration_rate_vs_plain_rsync']:.2f}")  # fmt: skip
        print(f"  downtime {big_run['downtime_seconds']:.2f} s vs {small_run['downtime_seconds']:.2f} s: "
              f"ratio {r['downtime_big_vs_small_base']:.2f} (goal < 1.2)")  # fmt: skip
        print(f"  bytes after power-off {big_run['leaf_literal_bytes']} vs leaf {leaf * MiB}: "
              f"ratio {r['bytes_after_power_off_vs_leaf']:.3f} (goal < 1.05)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
