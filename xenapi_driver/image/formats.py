"""Which kind of image a Glance record describes, and how each kind becomes a disk.

XenServer clouds store images as:

* ``vhd`` in ``ovf``/``ova``/``tgz`` containers: a gzip'd tar of a VHD chain,
  ``0.vhd`` the leaf, ``1.vhd`` its parent, and so on (what snapshots upload);
* ``vhd`` in ``bare``: one VHD file (dynamic or a single standalone chain member);
* ``raw`` (and ``ami``) in ``bare``: the disk's bytes;
* ``raw`` in ``tgz``: a gzip'd tar of one raw disk file (what the
  deployment guide's ``VdiThroughDevStore`` uploads);
* ``iso``: a CD image, booted from a CD drive beside a blank root disk;
* ``aki``/``ari``: kernel and ramdisk of AMI-style images, copied to dom0's
  ``/boot/guest``.
"""

from __future__ import annotations

import enum
from typing import Any

from xenapi_driver.image import errors

TGZ_CONTAINERS = ("ovf", "ova", "tgz", "compressed")


class Kind(enum.Enum):
    TGZ_VHD = "tgz"
    VHD = "vhd"
    RAW = "raw"
    RAW_TGZ = "raw-tgz"
    ISO = "iso"
    KERNEL = "kernel"
    RAMDISK = "ramdisk"

    @property
    def is_disk(self) -> bool:
        return self in (Kind.TGZ_VHD, Kind.VHD, Kind.RAW, Kind.RAW_TGZ)


def kind_of(meta: dict[str, Any]) -> Kind:
    """The kind of the image described by Glance record ``meta``; ImageUnacceptable if unsupported."""
    disk = str(meta.get("disk_format") or "").lower()
    container = str(meta.get("container_format") or "").lower()
    if disk == "vhd" and container in TGZ_CONTAINERS:
        return Kind.TGZ_VHD
    if disk == "vhd" and container in ("bare", ""):
        return Kind.VHD
    if disk in ("raw", "ami") and container in ("bare", "ami", ""):
        return Kind.RAW
    if disk == "raw" and container == "tgz":
        return Kind.RAW_TGZ
    if disk == "iso":
        return Kind.ISO
    if disk == "aki" or container == "aki":
        return Kind.KERNEL
    if disk == "ari" or container == "ari":
        return Kind.RAMDISK
    raise errors.bad_image(
        str(meta.get("id")),
        f"disk_format {disk or '(none)'} in container_format {container or '(none)'} cannot be "
        "booted on XenServer (use vhd in ovf or bare, raw, or iso)",
    )


def properties(meta: dict[str, Any]) -> dict[str, Any]:
    """The image's custom properties (Nova's API puts them under ``properties``)."""
    return dict(meta.get("properties") or {})


def truthy(value: Any) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")
