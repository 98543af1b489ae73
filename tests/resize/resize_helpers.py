"""Helpers for resize tests: a compute's objects, instances, disks with real data."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from nova import objects
from nova.virt import fake
from xenapi_driver import hostops, migrateops, vhd, vmops, volumeops
from xenapi_driver.session import XenAPISession
from xenapi_driver.simulator.handlers import storage

MiB = 1024**2
GiB = 1024**3
_ids = iter(range(1, 1_000_000))
NOVA_CHILD_TIMEOUT = 600  # seconds for one child run of Nova functional tests


def flavor(name: str, root_gb: int = 1, ephemeral_gb: int = 0, swap: int = 0, memory_mb: int = 512) -> Any:
    return objects.Flavor(
        name=name, flavorid=name, memory_mb=memory_mb, vcpus=1, root_gb=root_gb,
        ephemeral_gb=ephemeral_gb, swap=swap, extra_specs={},
    )  # fmt: skip


def make_instance(fl: Any, **fields: Any) -> objects.Instance:
    """A Nova Instance (not in a DB): ``save`` records progress instead."""
    fields.setdefault("id", next(_ids))
    fields.setdefault("uuid", str(uuid.uuid4()))
    inst = objects.Instance(
        flavor=fl,
        memory_mb=fl.memory_mb,
        vcpus=fl.vcpus,
        root_gb=fl.root_gb,
        ephemeral_gb=fl.ephemeral_gb,
        metadata={},
        system_metadata={},
        **fields,
    )
    progress: list[int] = []
    object.__setattr__(inst, "saved_progress", progress)
    object.__setattr__(inst, "save", lambda *a, **k: progress.append(inst.progress))
    return inst


def disk_path(pool: Any, vdi_ref: str) -> Path:
    return storage.disk_path(pool, vdi_ref)


def write_pattern(path: Path, seed: int, count: int = 8, span: int = 64 * MiB) -> None:
    """Random 4 KiB-aligned writes (libvhdi-safe) into the VHD leaf at ``path``."""
    rng = random.Random(seed)
    with vhd.open_chain(str(path)) as chain:
        for _ in range(count):
            offset = rng.randrange(0, span // 4096 - 64) * 4096
            chain.write(offset, rng.randbytes(4096 * rng.randint(1, 64)))


DATA_SPAN = 128 * MiB  # every test write lands below this offset


def digest(path: Path, length: int | None = DATA_SPAN) -> str:
    """SHA-256 of a disk's contents read through its VHD chain: the first ``length`` bytes
    (where the tests write), or the whole virtual disk with ``length=None``."""
    h = hashlib.sha256()
    with vhd.open_chain(str(path), writable=False) as chain:
        size = chain.virtual_size if length is None else length
        offset = 0
        while offset < size:
            n = min(64 * MiB, size - offset)
            h.update(chain.read(offset, n))
            offset += n
    return h.hexdigest()


class DataImageSource:
    """A root disk with real data in a two-level chain (a base and a leaf with its own writes)."""

    def __init__(self, compute: Compute, size: int = 64 * MiB, seed: int = 1) -> None:
        self.compute = compute
        self.size = size
        self.seed = seed

    def root_vdi(self, context: Any, instance: Any, image_meta: Any, sr_ref: str) -> str:
        s = self.compute.session
        record = {"name_label": "image", "SR": sr_ref, "virtual_size": str(self.size), "type": "user",
                  "sharable": False, "read_only": False, "other_config": {}}  # fmt: skip
        vdi = s.call_xenapi("VDI.create", record)
        write_pattern(disk_path(self.compute.pool, vdi), self.seed)
        snap = s.call_xenapi("VDI.snapshot", vdi, {})  # the image's base becomes a hidden parent
        s.call_xenapi("VDI.destroy", snap)
        write_pattern(disk_path(self.compute.pool, vdi), self.seed + 100, count=4)
        return vdi


class Compute:
    """One nova-compute's XAPI objects, built as XenAPIDriver builds them."""

    def __init__(self, sim: Any, pool: Any, host: Any) -> None:
        self.sim = sim
        self.pool = pool
        self.host = host
        self.session = XenAPISession(host.url, sim.username, sim.password, originator="resize-tests")
        self.hostops = hostops.HostOps(self.session)
        self.vmops = vmops.VMOps(self.session, fake.FakeVirtAPI(), hostops=self.hostops,
                                 image_source=DataImageSource(self))  # fmt: skip
        self.volumeops = volumeops.VolumeOps(self.session, lookup=self.vmops.lookup)
        self.migrateops = migrateops.MigrateOps(self.session, self.vmops, volumeops=self.volumeops)

    def close(self) -> None:
        self.session.close()

    def spawn(self, inst: Any, power_on: bool = True) -> str:
        self.vmops.spawn(None, inst, objects.ImageMeta.from_dict({}), [], None, {}, network_info=[],
                         power_on=power_on)  # fmt: skip
        return self.vmops.lookup(inst)[0]

    def root(self, inst: Any, role: str = "root") -> tuple[str, Path]:
        vm_ref, _ = self.vmops.lookup(inst)
        for vbd in self.session.call_xenapi("VM.get_VBDs", vm_ref):
            vdi = self.session.call_xenapi("VBD.get_VDI", vbd)
            oc = self.session.call_xenapi("VDI.get_other_config", vdi)
            if oc.get(vmops.DISK_ROLE_KEY) == role:
                return vdi, disk_path(self.pool, vdi)
        raise LookupError(role)

    def vm_names(self) -> list[str]:
        return sorted(
            r["name_label"] for r in self.session.call_xenapi("VM.get_all_records").values()
            if not r["is_control_domain"] and not r["is_a_template"]
        )  # fmt: skip

    def sr_files(self) -> set[str]:
        """VHD files in this host's local SR after a scan (GC run)."""
        sr = self.session.call_xenapi("SR.get_by_uuid", self.host.local_sr_uuid)
        self.session.call_xenapi("SR.scan", sr)
        return {p.name for p in self.host.sandbox.sr_path().iterdir() if p.suffix == ".vhd"}

    def staging(self) -> list[str]:
        images = self.host.sandbox.path("/images")
        return sorted(p.name for p in images.iterdir()) if images.exists() else []


def migrate(src: Any, dst: Any, inst: Any, new_flavor: Any, hook: Any = None) -> dict[str, Any]:
    """Nova's order: migrate_disk_and_power_off on the source, finish_migration on the destination."""
    src.migrateops.step_hook = hook
    disk_info = src.migrateops.migrate_disk_and_power_off(
        None, inst, dst.host.address, new_flavor, [], timeout=5
    )
    inst.old_flavor, inst.flavor = inst.flavor, new_flavor
    dst.migrateops.finish_migration(None, None, inst, disk_info, [], None, True, power_on=True)
    return json.loads(disk_info)


def revert(src: Any, dst: Any, inst: Any) -> None:
    """Nova's order: destroy on the destination, then finish_revert_migration on the source."""
    dst.vmops.destroy(inst, [])
    inst.flavor = inst.old_flavor
    src.migrateops.finish_revert_migration(None, inst, [], None, power_on=True)


def power_state(compute: Any, inst: Any) -> str:
    return compute.session.call_xenapi("VM.get_power_state", compute.vmops.lookup(inst)[0])


def run_nova_functional(tmp_path: Path, names: list[str], expected_run: int, what: str) -> None:
    """Run Nova functional test ``names`` (tests/resize/nova_resize) in a child interpreter.

    Why a child: Nova's test packages choose the concurrency mode at first
    import and pytest breaks their mock decorators (tests/nova/README.md).
    The child runs them under stdlib unittest through
    ``xenapi_nova_tests._runner`` and writes a JSON report read here; any
    failure fails the calling test with the child's tracebacks, and a run in
    which everything was skipped skips it. ``what`` names the tests in messages.
    """
    here = Path(__file__).resolve().parent
    repo_root = here.parent.parent
    report_path = tmp_path / "report.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(repo_root), str(repo_root / "tests" / "nova"), str(here)]
        + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    env["OS_NOVA_DISABLE_EVENTLET_PATCHING"] = "1"
    command = [sys.executable, "-m", "xenapi_nova_tests._runner", "--json", str(report_path), *names]
    try:
        child = subprocess.run(
            command, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=NOVA_CHILD_TIMEOUT,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail(f"{what} did not finish within {NOVA_CHILD_TIMEOUT} s", pytrace=False)
    tail = (child.stdout + child.stderr)[-8000:]
    if not report_path.exists():
        pytest.fail(f"runner exited {child.returncode} without a report:\n{tail}", pytrace=False)
    report = json.loads(report_path.read_text(encoding="utf-8"))
    problems = report["failures"] + report["errors"]
    if problems or child.returncode != 0:
        details = "\n\n".join(f"{p['id']}\n{p['traceback']}" for p in problems)
        pytest.fail(
            f"{len(problems)} of {report['tests_run']} failed:\n{details}\n--- tail ---\n{tail}",
            pytrace=False,
        )
    assert report["tests_run"] == expected_run
    if len(report["skipped"]) == report["tests_run"]:
        pytest.skip("; ".join(sorted({s["reason"] for s in report["skipped"]})))
