"""The two transports that copy a VHD chain to the destination: rsync (dom0 to dom0) and xapi (HTTP).

A copier has two calls: ``begin(item)`` prepares the destination for one
disk's chain and returns where it goes (merged into the disk_info Nova
hands to ``finish_migration``), and ``send(item, seq)`` copies one chain
member (0 is the leaf). Each records what it sent in ``item["stats"]``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import uuid as uuidlib
from collections.abc import Callable
from typing import Any

from xenapi_driver import exception as xexc
from xenapi_driver.migrateops.errors import ResizeStepFailed
from xenapi_driver.migrateops.journal import INCOMING_KEY
from xenapi_driver.migrateops.streaming import stream_vhd

LOG = logging.getLogger(__name__)


def _staging_id(instance_uuid: str, disk: dict[str, Any]) -> str:
    """The ``/images/instance<id>/`` directory of one disk: the plug-ins take one chain per id."""
    return str(uuidlib.uuid5(uuidlib.UUID(instance_uuid), f"{disk['role']}-{disk['device']}"))


class _RsyncCopier:
    """Copies chain members with the dom0 migration plug-in (rsync over root SSH trust)."""

    def __init__(self, session: Any, dest: str, instance: Any) -> None:
        self._session = session
        self._dest = dest
        self._instance = instance

    def begin(self, item: dict[str, Any]) -> dict[str, Any]:
        return {"staging_id": _staging_id(self._instance.uuid, item["disk"])}

    def send(self, item: dict[str, Any], seq: int) -> None:
        member = item["chain"][seq]
        result = self._session.call_plugin(
            "migration",
            "transfer_vhd",
            {
                "instance_uuid": item["target"]["staging_id"],
                "host": self._dest,
                "vdi_uuid": member["uuid"],
                "sr_path": f"/var/run/sr-mount/{item['sr_uuid']}",
                "seq_num": str(seq),
            },
        )
        stats = json.loads(result or "{}")
        item.setdefault("stats", {})[seq] = stats
        LOG.info("Sent %s.vhd of %s to %s: %s", seq, self._instance.uuid, self._dest, stats)

    def send_many(self, item: dict[str, Any], seqs: list[int]) -> None:
        """Send several members in one rsync: one plug-in process and one SSH session for them all.

        The batch's rsync statistics (``literal_bytes``, ``matched_bytes``,
        ``batch_file_size``) are recorded under its first member;
        each other member records its file size and which member's record
        holds the batch's bytes (rsync counts bytes per run, not per file).
        """
        if len(seqs) == 1:
            self.send(item, seqs[0])
            return
        members = [{"vdi_uuid": item["chain"][seq]["uuid"], "seq_num": seq} for seq in seqs]
        result = self._session.call_plugin(
            "migration",
            "transfer_vhds",
            {
                "instance_uuid": item["target"]["staging_id"],
                "host": self._dest,
                "sr_path": f"/var/run/sr-mount/{item['sr_uuid']}",
                "members": json.dumps(members),
            },
        )
        stats = json.loads(result or "{}")
        files = stats.pop("files", {})
        stats["batch_file_size"] = stats.get("file_size", 0)
        stats["file_size"] = files.get(str(seqs[0]), 0)
        records = item.setdefault("stats", {})
        records[seqs[0]] = stats
        for seq in seqs[1:]:
            size = files.get(str(seq), 0)
            records[seq] = {"file_size": size, "local": stats.get("local"), "sent_with": seqs[0]}
        LOG.info("Sent %s of %s to %s in one rsync: %s", [f"{s}.vhd" for s in seqs], self._instance.uuid,
                 self._dest, stats)  # fmt: skip


class _XapiCopier:
    """Streams each chain member from the source host's export_raw_vdi into the destination's import."""

    def __init__(self, session: Any, dest_session: Any, instance: Any) -> None:
        self._session = session
        self._dest = dest_session
        self.dest_session = dest_session  # MigrateOps asks the destination which parents it holds
        self._instance = instance
        self.bytes_sent: dict[int, int] = {}

    def begin(self, item: dict[str, Any]) -> dict[str, Any]:
        from xenapi_driver import hostops

        sr_ref = hostops.HostOps(self._dest).instance_sr()
        if not sr_ref:
            raise ResizeStepFailed(f"the destination host {self._dest.host_address} has no usable SR")
        leaf = item["chain"][0]
        if item.get("held"):
            return {"vdi_uuid": self._child_of_held(item, sr_ref, int(leaf["virtual_size"]))}
        vdi = self._dest.call_xenapi(
            "VDI.create",
            {
                "name_label": f"{self._instance.name} {item['disk']['role']} (incoming)",
                "name_description": f"resize of Nova instance {self._instance.uuid}",
                "SR": sr_ref,
                "virtual_size": str(leaf["virtual_size"]),
                "type": "user",
                "sharable": False,
                "read_only": False,
                "other_config": {INCOMING_KEY: self._instance.uuid},
            },
        )
        return {"vdi_uuid": self._dest.call_xenapi("VDI.get_uuid", vdi)}

    def _child_of_held(self, item: dict[str, Any], sr_ref: str, virtual_size: int) -> str:
        """An empty VDI on the destination whose parent is the held VHD; the deltas go into it.

        The destination's ``migration.create_child`` makes the file (the held
        one is only read); ``VDI.introduce`` makes XAPI know it without an
        ``SR.scan`` (whose GC could coalesce), tagged incoming like the
        VDI.create path so a revert or ``recover_host`` removes it.
        """
        held = item["held"]
        sr_uuid = self._dest.call_xenapi("SR.get_uuid", sr_ref)
        if sr_uuid != held["sr_uuid"]:
            raise ResizeStepFailed(
                f"the destination's SR changed from {held['sr_uuid']} to {sr_uuid} during the resize"
            )
        child = str(uuidlib.uuid4())
        self._dest.call_plugin(
            "migration",
            "create_child",
            {
                "sr_path": f"/var/run/sr-mount/{sr_uuid}",
                "base_vdi_uuid": held["vdi_uuid"],
                "vdi_uuid": child,
                "base_physical_size": str(held["physical_size"]),
            },
        )
        label = f"{self._instance.name} {item['disk']['role']} (incoming)"
        other = {INCOMING_KEY: self._instance.uuid}
        try:
            vdi = self._dest.call_xenapi(
                "VDI.introduce", child, label, f"resize of Nova instance {self._instance.uuid}",
                sr_ref, "user", False, False, other, child, {}, {},
            )  # fmt: skip
        except xexc.XenAPIError as exc:
            LOG.info("VDI.introduce of %s failed (%s); scanning the SR instead", child, exc.code)
            self._dest.call_xenapi("SR.scan", sr_ref)
            vdi = self._dest.call_xenapi("VDI.get_by_uuid", child)
            self._dest.call_xenapi("VDI.add_to_other_config", vdi, INCOMING_KEY, self._instance.uuid)
        if int(self._dest.call_xenapi("VDI.get_virtual_size", vdi)) < virtual_size:
            self._dest.call_xenapi("VDI.resize", vdi, str(virtual_size))
        return child

    def send(self, item: dict[str, Any], seq: int) -> None:
        chain = item["chain"]
        member = chain[seq]["uuid"]
        base = chain[seq + 1]["uuid"] if seq + 1 < len(chain) else None
        query = {"vdi": member, "format": "vhd"}
        if base:
            query["base"] = base
        sent = stream_vhd(self._session, self._dest, query, item["target"]["vdi_uuid"])
        item.setdefault("stats", {})[seq] = {"literal_bytes": sent}

    def send_many(self, item: dict[str, Any], seqs: list[int]) -> None:
        """One stream a member, in order (each is a delta over the one sent before)."""
        for seq in seqs:
            self.send(item, seq)


def open_copier(
    session: Any,
    transport: str,
    dest: str,
    instance: Any,
    stack: contextlib.ExitStack,
    dest_session: Callable[[str], contextlib.AbstractContextManager[Any]],
) -> _RsyncCopier | _XapiCopier:
    """The copier for ``transport``; the xapi one's destination session closes with ``stack``."""
    if transport == "xapi":
        return _XapiCopier(session, stack.enter_context(dest_session(dest)), instance)
    return _RsyncCopier(session, dest, instance)
