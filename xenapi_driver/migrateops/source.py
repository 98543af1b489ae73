"""The source side of a resize: check, snapshot, copy while the guest runs, power off, keep the original.

**Downtime depends on the leaf, not the disk.** Each disk is snapshotted
while the guest runs (``VDI.snapshot`` turns its data into an immutable,
hidden parent and gives the disk an empty leaf); the parents are copied
while the guest keeps running, then the guest is powered off and only the
leaves (the writes since the snapshot) are copied. On the same host or a
shared SR nothing is copied: each disk is cloned after power-off. A resize
down powers off first and sends a shrunk copy of the root disk
(``resize_down.py``).

The source VM is never changed beyond a rename until the user confirms, and
each step is journaled (``journal.py``), so any failure is rolled back.
"""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Any

from nova import exception as nova_exception
from nova.virt import driver as virt_driver
from xenapi_driver import exception as xexc
from xenapi_driver import vm_utils
from xenapi_driver import vmops as vmops_mod
from xenapi_driver.migrateops import resize_down
from xenapi_driver.migrateops.base import MigrateBase
from xenapi_driver.migrateops.checks import check_resize, choose_mode
from xenapi_driver.migrateops.copiers import open_copier
from xenapi_driver.migrateops.errors import ResizeStepFailed, _refuse
from xenapi_driver.migrateops.held import _send_length, find_held
from xenapi_driver.migrateops.journal import INCOMING_KEY, KEPT_SUFFIX, RESIZE_OF_KEY, SNAPSHOT_KEY

LOG = logging.getLogger(__name__)


class SourceRole(MigrateBase):
    """``migrate_disk_and_power_off``: the source compute's part of a resize."""

    def migrate_disk_and_power_off(
        self,
        context: Any,
        instance: Any,
        dest: str,
        flavor: Any,
        network_info: Any,
        block_device_info: Any = None,
        timeout: int = 0,
        retry_interval: int = 0,
    ) -> str:
        """Copy the disks to ``dest`` and power the instance off; returns disk_info JSON."""
        vm_ref, record = self._vmops._require(instance)  # noqa: SLF001 - VMOps' own lookup
        disks = [d for d in self._disks(vm_ref) if d["role"] != "swap"]
        check_resize(self._session, instance, flavor, disks)
        mode = choose_mode(self._session, dest, disks)
        journal: dict[str, Any] = {
            "dest": dest,
            "mode": mode,
            "name": instance.name,
            "power_state": record["power_state"],
            "disks": [{"role": d["role"], "device": d["device"], "uuid": d["rec"]["uuid"]} for d in disks],
            "snapshots": [],
            "steps": [],
            "volumes": len(virt_driver.block_device_info_get_mapping(block_device_info)),
        }
        self._progress(instance, 0)
        try:
            self._step_done(vm_ref, journal, "checked")
            shrink = resize_down.new_root_size(disks, flavor)
            if shrink:
                sent = self._migrate_shrinking(
                    instance, vm_ref, journal, disks, mode, shrink, timeout, retry_interval
                )
            elif mode in ("same-host", "shared"):
                sent = self._migrate_without_copy(instance, vm_ref, journal, timeout, retry_interval)
            else:
                sent = self._migrate_with_copy(
                    instance, vm_ref, journal, disks, mode, timeout, retry_interval
                )
        except nova_exception.InstanceFaultRollback:
            self._rollback_source(instance, vm_ref, block_device_info)
            raise
        except Exception as exc:
            LOG.exception("Migrating instance %s to %s failed; rolling back", instance.uuid, dest)
            reason = str(exc) if isinstance(exc, ResizeStepFailed) else f"{type(exc).__name__}: {exc}"
            self._rollback_source(instance, vm_ref, block_device_info)
            raise _refuse(f"migration to {dest} failed and was rolled back: {reason}") from exc
        self._progress(instance, 100)
        disk_info = {
            "version": 1,
            "mode": mode,
            "source_host": self._session.host_address,
            "source_vm_uuid": record["uuid"],
            "instance_uuid": instance.uuid,
            "disks": sent,
        }
        return json.dumps(disk_info, sort_keys=True)

    def _power_off_and_keep(
        self, instance: Any, vm_ref: str, journal: dict[str, Any], timeout: int, retry_interval: int
    ) -> None:
        self._hook("power_off")
        self._vmops.power_off(instance, timeout=timeout, retry_interval=retry_interval)
        self._step_done(vm_ref, journal, "powered_off")
        if self._volumeops is not None and journal.get("volumes"):
            # The destination attaches them; Nova terminates this host's connections next.
            self._volumeops.detach_all(vm_ref)
            self._step_done(vm_ref, journal, "volumes_detached")
        self._hook("rename")
        self._session.call_xenapi("VM.set_name_label", vm_ref, instance.name + KEPT_SUFFIX)
        with contextlib.suppress(xexc.XenAPIError):
            self._session.call_xenapi("VM.remove_from_other_config", vm_ref, RESIZE_OF_KEY)
        self._session.call_xenapi("VM.add_to_other_config", vm_ref, RESIZE_OF_KEY, instance.uuid)
        self._session.call_xenapi("VM.remove_from_other_config", vm_ref, vm_utils.NOVA_UUID_KEY)
        self._vmops._refs.pop(instance.uuid, None)  # noqa: SLF001 - drop VMOps' cached ref
        self._step_done(vm_ref, journal, "renamed")

    def _migrate_without_copy(
        self, instance: Any, vm_ref: str, journal: dict[str, Any], timeout: int, retry_interval: int
    ) -> list[dict[str, Any]]:
        """Same host or shared SR: power off, clone each disk copy-on-write (no data moves)."""
        self._progress(instance, 20)
        self._power_off_and_keep(instance, vm_ref, journal, timeout, retry_interval)
        self._progress(instance, 60)
        sent = self._clone_disks(instance, vm_ref, journal, journal["disks"])
        self._step_done(vm_ref, journal, "cloned")
        return sent

    def _clone_disks(
        self, instance: Any, vm_ref: str, journal: dict[str, Any], disks: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """Clone each of the journal's ``disks`` copy-on-write for the new VM (the guest is off).

        Each clone is tagged incoming and journaled with the snapshots, so a
        revert destroys it like them; returns the disk_info entries.
        """
        sent = []
        for disk in disks:
            self._hook("clone")
            src = self._session.call_xenapi("VDI.get_by_uuid", disk["uuid"])
            clone = self._session.call_xenapi("VDI.clone", src, {})
            clone_uuid = self._session.call_xenapi("VDI.get_uuid", clone)
            self._session.call_xenapi("VDI.add_to_other_config", clone, INCOMING_KEY, instance.uuid)
            journal["snapshots"].append(clone_uuid)  # destroyed on revert like snapshots
            self._write_journal(vm_ref, journal)
            sent.append({"role": disk["role"], "device": disk["device"], "vdi_uuid": clone_uuid})
        return sent

    def _migrate_with_copy(
        self,
        instance: Any,
        vm_ref: str,
        journal: dict[str, Any],
        disks: list[dict[str, Any]],
        transport: str,
        timeout: int,
        retry_interval: int,
    ) -> list[dict[str, Any]]:
        dest = journal["dest"]
        # 1. Snapshot each disk: its data becomes immutable parents; the disk keeps an empty leaf.
        chains = [self._snapshot_chain(instance, vm_ref, journal, disk) for disk in disks]
        self._step_done(vm_ref, journal, "snapshotted")
        self._progress(instance, 10)

        with contextlib.ExitStack() as stack:
            copier = open_copier(self._session, transport, dest, instance, stack, self._dest_session)
            journal["transport"] = transport
            # 2. Immutable parents while the guest runs, but none the destination already holds.
            known = getattr(copier, "dest_session", None)  # the xapi copier's, else opened on demand
            find_held(
                self._session,
                dest,
                chains,
                lambda: known if known is not None else stack.enter_context(self._dest_session(dest)),
            )
            held = {
                f"{i['disk']['role']}-{i['disk']['device']}": i["held"]["vdi_uuid"]
                for i in chains
                if i.get("held")
            }
            if held:
                journal["held"] = held
                self._write_journal(vm_ref, journal)
            self._send_chains(instance, copier, chains, down_to=1, progress=(10, 50))
            self._step_done(vm_ref, journal, "parents_copied")
            # 3. Power off; keep the original VM for revert.
            self._power_off_and_keep(instance, vm_ref, journal, timeout, retry_interval)
            self._progress(instance, 70)
            # 4. The leaves: only what the guest wrote since the snapshot.
            for item in chains:
                self._hook("copy_leaf")
                copier.send(item, 0)
            self._step_done(vm_ref, journal, "leaves_copied")
            self._progress(instance, 90)
        return _sent_chains(chains, transport)

    def _migrate_shrinking(
        self,
        instance: Any,
        vm_ref: str,
        journal: dict[str, Any],
        disks: list[dict[str, Any]],
        mode: str,
        new_size: int,
        timeout: int,
        retry_interval: int,
    ) -> list[dict[str, Any]]:
        """Resize down (see resize_down.py): power off, shrink a copy of the root disk, send it.

        The guest is powered off first (the file system must be consistent),
        so the downtime includes the shrink and every copy.
        """
        self._progress(instance, 10)
        self._power_off_and_keep(instance, vm_ref, journal, timeout, retry_interval)
        self._progress(instance, 30)
        root = next(d for d in disks if d["role"] == "root")
        no_copy = mode in ("same-host", "shared")

        def remember(info: dict[str, Any]) -> None:
            journal[resize_down.SHRUNK_KEY] = info
            journal["snapshots"].append(info["uuid"])
            self._write_journal(vm_ref, journal)

        self._hook("shrink")
        tag = (INCOMING_KEY if no_copy else SNAPSHOT_KEY, instance.uuid)
        try:
            copy = resize_down.make_copy(
                self._session, instance, root["rec"]["uuid"], new_size, remember, tag
            )
        except resize_down.ShrinkRefused as exc:
            raise ResizeStepFailed(f"the root disk cannot be resized down: {exc.reason}") from None
        self._step_done(vm_ref, journal, "shrunk")
        self._progress(instance, 50)
        if no_copy:
            sent = [{"role": "root", "device": root["device"], "vdi_uuid": copy["uuid"]}]
            others = [disk for disk in journal["disks"] if disk["role"] != "root"]
            sent += self._clone_disks(instance, vm_ref, journal, others)
            self._step_done(vm_ref, journal, "cloned")
            return sent
        # Copy: the shrunk root as a one-member chain, the other disks' chains as usual
        # (the guest is already off: no second pass for the leaves).
        chains = [
            {
                "disk": disk,
                "chain": [{"uuid": copy["uuid"], "virtual_size": new_size}],
                "sr_uuid": self._session.call_xenapi("SR.get_uuid", disk["rec"]["SR"]),
            }
            if disk["role"] == "root"
            else self._snapshot_chain(instance, vm_ref, journal, disk)
            for disk in disks
        ]
        with contextlib.ExitStack() as stack:
            copier = open_copier(self._session, mode, journal["dest"], instance, stack, self._dest_session)
            journal["transport"] = mode
            self._send_chains(instance, copier, chains, down_to=0, progress=(50, 40))
        self._step_done(vm_ref, journal, "leaves_copied")
        return _sent_chains(chains, mode)

    def _snapshot_chain(
        self, instance: Any, vm_ref: str, journal: dict[str, Any], disk: dict[str, Any]
    ) -> dict[str, Any]:
        """Snapshot one disk and return its chain to send (``{disk, chain, sr_uuid}``).

        The snapshot turns the disk's data into immutable parents (the disk
        keeps an empty leaf); it is tagged and journaled before anything else
        so a rollback destroys it.
        """
        self._hook("snapshot")
        snap = self._session.call_xenapi("VDI.snapshot", disk["ref"], {})
        self._session.call_xenapi("VDI.add_to_other_config", snap, SNAPSHOT_KEY, instance.uuid)
        journal["snapshots"].append(self._session.call_xenapi("VDI.get_uuid", snap))
        self._write_journal(vm_ref, journal)
        chain = self._chain(self._session, disk["rec"]["uuid"])
        sr_uuid = self._session.call_xenapi("SR.get_uuid", disk["rec"]["SR"])
        return {"disk": disk, "chain": chain, "sr_uuid": sr_uuid}

    def _send_chains(
        self,
        instance: Any,
        copier: Any,
        chains: list[dict[str, Any]],
        *,
        down_to: int,
        progress: tuple[int, int],
    ) -> None:
        """Begin each chain on the destination and send its members, deepest first, to ``down_to``.

        ``down_to=1`` sends only the parents (the leaves follow after
        power-off); ``down_to=0`` sends everything (the guest is already
        off). ``progress`` is ``(start, span)`` in percent over the members sent.
        """
        start, span = progress
        total = sum(_send_length(c) - down_to for c in chains) or 1
        done = 0
        for item in chains:
            item["target"] = copier.begin(item)
            seqs = list(range(_send_length(item) - 1, down_to - 1, -1))
            parents = [seq for seq in seqs if seq > 0]
            if parents:
                # All parents of a chain in one transfer (one SSH session and rsync run).
                for _ in parents:
                    self._hook("copy_parent")
                copier.send_many(item, parents)
                done += len(parents)
                self._progress(instance, start + span * done // total)
            if 0 in seqs:
                self._hook("copy_leaf")
                copier.send(item, 0)
                done += 1
                self._progress(instance, start + span * done // total)

    def _disks(self, vm_ref: str) -> list[dict[str, Any]]:
        """The VM's Nova disks (root, ephemeral, swap) with their VDI records."""
        expr = f'field "VM" = "{vm_utils.quote(vm_ref)}"'
        disks = []
        for vbd in self._session.get_all_records_where("VBD", expr).values():
            vdi = vbd.get("VDI") or vm_utils.NULL_REF
            if vbd.get("type") != "Disk" or vdi == vm_utils.NULL_REF:
                continue
            rec = self._session.get_rec("VDI", vdi)
            if rec is None:
                continue
            role = (rec.get("other_config") or {}).get(vmops_mod.DISK_ROLE_KEY)
            if role in ("root", "ephemeral", "swap"):
                disks.append({"role": role, "device": vbd["userdevice"], "ref": vdi, "rec": rec})
        disks.sort(key=lambda d: int(d["device"]) if str(d["device"]).isdigit() else 99)
        return disks

    def _chain(self, session: Any, vdi_uuid: str) -> list[dict[str, Any]]:
        """``[{uuid, virtual_size}]`` of a VDI's VHD chain, leaf first (via sm_config vhd-parent)."""
        chain = []
        current: str | None = vdi_uuid
        while current:
            ref = session.call_xenapi("VDI.get_by_uuid", current)
            rec = session.call_xenapi("VDI.get_record", ref)
            chain.append({"uuid": current, "virtual_size": int(rec["virtual_size"])})
            current = (rec.get("sm_config") or {}).get("vhd-parent") or None
            if len(chain) > 64:
                raise ResizeStepFailed(f"VHD chain of {vdi_uuid} is longer than 64: refusing")
        return chain


def _sent_chains(chains: list[dict[str, Any]], transport: str) -> list[dict[str, Any]]:
    """The disk_info entries of copied chains, for the destination's ``finish_migration``."""
    return [
        {
            "role": item["disk"]["role"],
            "device": item["disk"]["device"],
            "chain_length": _send_length(item),  # VHDs sent: the held base and below stay out
            **({"held_base": item["held"]} if item.get("held") else {}),
            "transport": transport,
            # bytes each copy sent, by sequence number (0 = the leaf, after power-off)
            "stats": {str(k): v for k, v in item.get("stats", {}).items()},
            **item["target"],
        }
        for item in chains
    ]
