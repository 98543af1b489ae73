"""AMI-style kernels and ramdisks reach dom0's /boot/guest through the kernel plug-in."""

from __future__ import annotations

import pytest
from image_helpers import make_instance, pattern, sr_state

from nova import exception as nova_exception
from nova import objects
from xenapi_driver.image import XenAPIImageSource


@pytest.mark.parametrize("handler", ["direct_vhd", "vdi_remote_stream"])
def test_kernel_and_ramdisk_copied_to_boot_guest(
    handler, conf, sim, session, context, glance, sr_ref, sr_dir
):
    conf.set_override("image_handler", handler, group="xenserver")
    kernel, ramdisk = pattern("vmlinuz", 3 * 1024 * 1024 + 100), pattern("initrd", 700_000)
    kernel_id = glance.add(kernel, "aki", "aki")
    ramdisk_id = glance.add(ramdisk, "ari", "ari")
    machine = glance.add(b"\0" * 4096, "ami", "ami", kernel_id=kernel_id, ramdisk_id=ramdisk_id)
    instance = make_instance(kernel_id=kernel_id, ramdisk_id=ramdisk_id, image_ref=machine)
    before = sr_state(sim, sr_ref, sr_dir)
    source = XenAPIImageSource(session)
    meta = objects.ImageMeta.from_dict({"id": machine})

    kernel_file, ramdisk_file = source.kernel_ramdisk(context, instance, meta, sr_ref)

    root = sim.pool.master.root
    assert kernel_file == f"/boot/guest/{kernel_id}" and ramdisk_file == f"/boot/guest/{ramdisk_id}"
    assert (root / kernel_file.lstrip("/")).read_bytes() == kernel
    assert (root / ramdisk_file.lstrip("/")).read_bytes() == ramdisk
    assert sr_state(sim, sr_ref, sr_dir) == before  # the temporary VDIs are gone
    source.remove_kernel_ramdisk(kernel_file, ramdisk_file)
    assert not (root / kernel_file.lstrip("/")).exists()


def test_no_kernel_no_files(conf, session, context, glance, sr_ref):
    source = XenAPIImageSource(session)
    meta = objects.ImageMeta.from_dict({"id": glance.add(b"\0" * 4096, "raw", "bare")})
    assert source.kernel_ramdisk(context, make_instance(), meta, sr_ref) == (None, None)


def test_kernel_too_large(conf, sim, session, context, glance, sr_ref, sr_dir):
    conf.set_override("max_kernel_ramdisk_size", 1024 * 1024, group="xenserver")
    kernel_id = glance.add(pattern("big", 2 * 1024 * 1024), "aki", "aki")
    before = sr_state(sim, sr_ref, sr_dir)
    with pytest.raises(nova_exception.ImageUnacceptable, match="max_kernel_ramdisk_size"):
        XenAPIImageSource(session).kernel_ramdisk(
            context, make_instance(kernel_id=kernel_id), {"id": kernel_id}, sr_ref
        )
    assert sr_state(sim, sr_ref, sr_dir) == before
    conf.clear_override("max_kernel_ramdisk_size", group="xenserver")


def test_independent_compute_refuses_ami(conf, session, context, glance, sr_ref):
    conf.set_override("independent_compute", True, group="xenserver")
    try:
        kernel_id = glance.add(b"k" * 4096, "aki", "aki")
        with pytest.raises(nova_exception.NotSupportedWithOption):
            XenAPIImageSource(session).kernel_ramdisk(
                context, make_instance(kernel_id=kernel_id), {"id": kernel_id}, sr_ref
            )
    finally:
        conf.clear_override("independent_compute", group="xenserver")
