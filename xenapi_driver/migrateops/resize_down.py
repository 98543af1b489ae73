"""Resize down: shrink a copy of the root disk when it holds one ext3/ext4 partition.

XAPI cannot shrink a VDI and a guest's file system must shrink before its
disk does, so a resize down never touches the instance's root disk: the dom0
plug-in ``partition_utils`` (``shrink_check``, ``shrink_copy``; the work is
in ``dom0_ext.py``) reads the disk through its VHD chain and writes a NEW,
smaller disk in the same SR. That copy is what the resize sends to the
destination (any transport) or, on the same host or a shared SR, what the
new VM uses. The original disk stays with the kept VM for revert.

The order in :meth:`MigrateOps._migrate_shrinking`:

1. ``shrink_check`` while the guest runs (reads only): one MBR partition of
   type 0x83 with ext3/ext4, and the superblock's counters say the data can
   fit. Anything else is refused before anything changes.
2. Power off (a consistent file system is needed) and keep the original VM,
   as every resize does. The downtime therefore includes the shrink.
3. ``shrink_copy``: e2fsck, resize2fs -P (exact minimum; refused if it does
   not fit), resize2fs, e2fsck -n, write a dynamic VHD of exactly the new
   size. Its UUID is journaled before the plug-in runs, so a rollback (or a
   revert after a crash) always finds and removes it.
4. The copy is sent as a one-member chain (``0.vhd``), and the other disks
   as usual; or, with no copy, used directly.
"""

from __future__ import annotations

import contextlib
import json
import logging
import uuid as uuidlib
from typing import Any

from xenapi_driver import exception as xexc

LOG = logging.getLogger(__name__)

GiB = 1024**3
PLUGIN = "partition_utils"
SHRUNK_KEY = "shrunk"  # journal: the shrunk copy's VDI UUID and SR UUID
REFUSED = "SHRINK_REFUSED"


class ShrinkRefused(Exception):
    """The root disk cannot be shrunk; ``reason`` says why (shown to the user)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def new_root_size(disks: list[dict[str, Any]], flavor: Any) -> int | None:
    """The new root disk size in bytes when this resize shrinks the root disk, else None."""
    root_gb = int(getattr(flavor, "root_gb", 0) or 0)
    root = next((d for d in disks if d["role"] == "root"), None)
    if root is None or not root_gb:
        return None
    wanted = root_gb * GiB
    return wanted if wanted < int(root["rec"]["virtual_size"]) else None


def staging_id(instance_uuid: str) -> str:
    """The source dom0's ``/images/instance<id>/`` where the shrink works (one per instance)."""
    return str(uuidlib.uuid5(uuidlib.UUID(instance_uuid), "resize-down-root"))


def _plugin(session: Any, fn: str, args: dict[str, str]) -> dict[str, Any]:
    try:
        return json.loads(session.call_plugin(PLUGIN, fn, args))
    except xexc.XenAPIError as exc:
        if exc.code == REFUSED:
            raise ShrinkRefused(str((exc.params or ["the root disk cannot be shrunk"])[0])) from None
        raise


def check(session: Any, root: dict[str, Any], new_size: int, file_sr_types: frozenset[str]) -> dict[str, Any]:
    """Refuse (ShrinkRefused) unless the root disk can be shrunk to ``new_size``; reads only."""
    sr = session.call_xenapi("SR.get_record", root["rec"]["SR"])
    if sr["type"] not in file_sr_types:
        raise ShrinkRefused(
            f"the root disk is on a {sr['type']} SR ({sr['name_label']}); resize down reads and "
            "rewrites its VHD files in dom0, which needs a file SR (EXT, NFS)"
        )
    args = {"sr_path": f"/var/run/sr-mount/{sr['uuid']}", "vdi_uuid": root["rec"]["uuid"],
            "new_size": str(new_size)}  # fmt: skip
    try:
        plan = _plugin(session, "shrink_check", args)
    except xexc.XenAPIError as exc:
        # Not a refusal of the layout but dom0 could not look: still refused, nothing changed yet.
        advice = (
            "; install the dom0 plug-ins shipped with this driver ('xenapi-driver install-plugins')"
            if exc.code in ("UNKNOWN_XENAPI_PLUGIN_FUNCTION", "XENAPI_MISSING_PLUGIN")
            else ""
        )
        raise ShrinkRefused(
            f"dom0 could not inspect the root disk ({exc.code} {' '.join(exc.params)[:300]}){advice}"
        ) from None
    LOG.info("Resize down of root disk %s to %s bytes is possible: %s", root["rec"]["uuid"], new_size, plan)
    return plan


def make_copy(
    session: Any,
    instance: Any,
    root_uuid: str,
    new_size: int,
    remember: Any,
    tag: tuple[str, str],
) -> dict[str, Any]:
    """Write the shrunk copy of ``root_uuid`` into its SR and make XAPI know it; ``{uuid, ref, plan}``.

    ``remember(info)`` journals the copy's UUID and SR before the plug-in
    runs. ``tag`` is the ``other_config`` key and value the copy carries (the
    resize's snapshot tag when it is sent, the incoming tag when used here).
    """
    root_ref = session.call_xenapi("VDI.get_by_uuid", root_uuid)
    sr_ref = session.call_xenapi("VDI.get_SR", root_ref)
    sr_uuid = session.call_xenapi("SR.get_uuid", sr_ref)
    new_uuid = str(uuidlib.uuid4())
    remember({"uuid": new_uuid, "sr_uuid": sr_uuid})
    args = {
        "sr_path": f"/var/run/sr-mount/{sr_uuid}",
        "vdi_uuid": root_uuid,
        "new_size": str(new_size),
        "new_vdi_uuid": new_uuid,
        "instance_uuid": staging_id(instance.uuid),
    }
    plan = _plugin(session, "shrink_copy", args)
    ref = _introduce(session, sr_ref, new_uuid, instance, tag)
    size = int(session.call_xenapi("VDI.get_virtual_size", ref))
    if size != new_size:
        raise ShrinkRefused(f"the shrunk copy has {size} bytes, not {new_size}")
    LOG.info("Shrunk copy %s of root disk %s: %s", new_uuid, root_uuid, plan)
    return {"uuid": new_uuid, "ref": ref, "plan": plan}


def _introduce(session: Any, sr_ref: str, vdi_uuid: str, instance: Any, tag: tuple[str, str]) -> str:
    label = f"{instance.name} root (resized down)"
    try:
        ref = session.call_xenapi(
            "VDI.introduce", vdi_uuid, label, f"resize down of Nova instance {instance.uuid}", sr_ref,
            "user", False, False, {tag[0]: tag[1]}, vdi_uuid, {}, {},
        )  # fmt: skip
    except xexc.XenAPIError as exc:
        LOG.info("VDI.introduce of %s failed (%s); scanning the SR instead", vdi_uuid, exc.code)
        session.call_xenapi("SR.scan", sr_ref)
        ref = session.call_xenapi("VDI.get_by_uuid", vdi_uuid)
        session.call_xenapi("VDI.set_name_label", ref, label)
        with contextlib.suppress(xexc.XenAPIError):
            session.call_xenapi("VDI.remove_from_other_config", ref, tag[0])
        session.call_xenapi("VDI.add_to_other_config", ref, tag[0], tag[1])
    return ref


def cleanup(session: Any, instance_uuid: str, journal: dict[str, Any]) -> None:
    """Remove what a resize down left on the source: its staging directory and an unknown copy.

    The copy's VDI is destroyed with the resize's snapshots (its UUID is in
    the journal's ``snapshots``). Only a copy whose file reached the SR but
    which XAPI never learned of (a compute killed between the plug-in and
    ``VDI.introduce``) needs more: a scan makes XAPI know it, then it goes.
    """
    shrunk = journal.get(SHRUNK_KEY)
    if not shrunk:
        return
    with contextlib.suppress(Exception):
        session.call_plugin("migration", "cleanup_received", {"instance_uuid": staging_id(instance_uuid)})
    try:
        session.call_xenapi("VDI.get_by_uuid", shrunk["uuid"])
        return  # known: destroyed with the snapshots
    except xexc.XenAPIError:
        pass
    try:
        sr_ref = session.call_xenapi("SR.get_by_uuid", shrunk["sr_uuid"])
        session.call_xenapi("SR.scan", sr_ref)
        ref = session.call_xenapi("VDI.get_by_uuid", shrunk["uuid"])
        session.call_xenapi("VDI.destroy", ref)
    except xexc.XenAPIError as exc:
        LOG.debug("No shrunk copy %s to remove: %s", shrunk["uuid"], exc)
