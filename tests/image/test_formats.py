"""Which Glance disk/container formats boot, and as what."""

from __future__ import annotations

import pytest

from nova import exception as nova_exception
from xenapi_driver.image.formats import Kind, kind_of


@pytest.mark.parametrize(
    ("disk", "container", "kind"),
    [
        ("vhd", "ovf", Kind.TGZ_VHD),
        ("vhd", "ova", Kind.TGZ_VHD),
        ("vhd", "tgz", Kind.TGZ_VHD),
        ("VHD", "OVF", Kind.TGZ_VHD),
        ("vhd", "bare", Kind.VHD),
        ("raw", "bare", Kind.RAW),
        ("ami", "ami", Kind.RAW),
        ("raw", "tgz", Kind.RAW_TGZ),
        ("iso", "bare", Kind.ISO),
        ("aki", "aki", Kind.KERNEL),
        ("ari", "ari", Kind.RAMDISK),
    ],
)
def test_supported(disk, container, kind):
    assert kind_of({"id": "i", "disk_format": disk, "container_format": container}) is kind


@pytest.mark.parametrize(
    ("disk", "container"), [("qcow2", "bare"), ("vmdk", "bare"), ("vhd", "docker"), ("", "")]
)
def test_refused_with_the_formats_named(disk, container):
    with pytest.raises(nova_exception.ImageUnacceptable, match="cannot be booted"):
        kind_of({"id": "i", "disk_format": disk, "container_format": container})
