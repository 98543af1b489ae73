"""The image layer wired into XenAPIDriver: ISO boots with a CD, AMI boots with dom0 kernels."""

from __future__ import annotations

from typing import Any

import pytest
from image_helpers import MiB, make_instance, pattern, raw_disk, vdi_bytes
from nova.network import model as network_model

from nova import objects
from nova.virt import fake
from xenapi_driver.driver import XenAPIDriver
from xenapi_driver.image import XenAPIImageSource


@pytest.fixture
def driver(conf: Any) -> Any:
    conf.set_override("image_handler", "vdi_remote_stream", group="xenserver")
    drv = XenAPIDriver(fake.FakeVirtAPI())
    drv.init_host("compute-1")
    # The driver's own image layer, not one a test put in.
    assert isinstance(drv.vmops.image_source, XenAPIImageSource)
    try:
        yield drv
    finally:
        drv.cleanup_host("compute-1")


def spawn(driver: Any, context: Any, instance: Any) -> str:
    meta = objects.ImageMeta.from_dict({"id": instance.image_ref})
    driver.spawn(context, instance, meta, [], "", {}, network_info=network_model.NetworkInfo([]))
    return driver.vmops.lookup(instance)[0]


def test_iso_boots_from_a_cd_beside_a_blank_root(driver, sim, context, glance, sr_dir):
    iso = raw_disk(4 * MiB)
    instance = make_instance(image_ref=glance.add(iso, "iso", "bare"))
    vm = spawn(driver, context, instance)
    db = sim.pool.db
    vbds = {db.get("VBD", v)["userdevice"]: db.get("VBD", v) for v in db.get("VM", vm)["VBDs"]}
    assert vbds["3"]["type"] == "CD" and vbds["3"]["mode"] == "RO" and vbds["3"]["bootable"]
    assert vdi_bytes(sr_dir, db.get("VDI", vbds["3"]["VDI"])["uuid"], len(iso)) == iso
    assert vbds["0"]["type"] == "Disk" and not vbds["0"]["bootable"]
    made = {vbds["0"]["VDI"], vbds["3"]["VDI"]}
    driver.destroy(context, instance, [])
    assert not made & set(db.all("VDI"))


def test_ami_boots_with_kernel_and_ramdisk_in_dom0(driver, sim, context, glance):
    kernel_id = glance.add(pattern("k", 2 * MiB), "aki", "aki")
    ramdisk_id = glance.add(pattern("r", MiB), "ari", "ari")
    machine = glance.add(raw_disk(4 * MiB), "ami", "ami")
    instance = make_instance(image_ref=machine, kernel_id=kernel_id, ramdisk_id=ramdisk_id)
    vm = spawn(driver, context, instance)
    rec = sim.pool.db.get("VM", vm)
    assert rec["PV_kernel"] == f"/boot/guest/{kernel_id}" and rec["PV_ramdisk"] == f"/boot/guest/{ramdisk_id}"
    assert (sim.pool.master.root / "boot" / "guest" / kernel_id).read_bytes() == pattern("k", 2 * MiB)
