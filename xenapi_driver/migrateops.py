"""Resize and cold migration: move an instance's VHD chains between dom0s, then confirm or revert.

The four Nova entry points (``migrate_disk_and_power_off`` on the source,
``finish_migration`` on the destination, ``confirm_migration`` and
``finish_revert_migration``) map to the methods of :class:`MigrateOps`; the
driver only delegates. ``doc/source/resize.rst`` draws the sequence.

Why it is built this way:

* **Downtime depends on the leaf, not the disk.** Each disk is snapshotted
  while the guest runs (``VDI.snapshot`` turns its data into an immutable,
  hidden parent and gives the disk an empty leaf); the parents are copied
  while the guest keeps running, then the guest is powered off and only the
  leaves (the writes since the snapshot) are copied.
* **Nothing is lost.** The source VM is never changed beyond a rename until
  the user confirms: it is kept (renamed ``<name>-orig``, with its Nova UUID
  moved from ``nova_uuid`` to ``nova_resize_of`` so no lookup mistakes it for
  the instance) and its disks keep their chains. Every completed step is
  journaled in the kept VM's ``other_config['nova_resize']``, so a
  nova-compute killed half-way can be reverted by Nova's own ``init_host``
  (it calls ``finish_revert_migration`` for instances left in
  RESIZE_MIGRATING) and :meth:`MigrateOps.recover_host` removes half-imported
  disks on a destination.
* **Two transports.** ``rsync`` (default): the dom0 ``migration`` plug-in
  rsyncs each VHD into the destination dom0's ``/images/instance<uuid>/`` and
  ``move_vhds_into_sr`` imports the chain there. ``xapi``: nova-compute
  streams ``GET /export_raw_vdi?format=vhd[&base=parent]`` from the source
  host into ``PUT /import_raw_vdi?format=vhd`` on the destination host (full
  base first, then each delta), so dom0s need no SSH trust. The destination's
  XAPI URL is this compute's ``[xenserver] connection_url`` with the host
  replaced by the destination address Nova passes (``dest``); the
  credentials are this compute's own. No secret is ever written to metadata.
* **Same host or shared SR: no copy.** After power-off each disk is cloned
  (``VDI.clone``, copy-on-write, constant time) and the new VM uses the clones.
* **Parents the destination holds are not sent.** Before copying, the
  destination's ``migration.vhd_identities`` lists its hidden, intact base
  copies by VHD unique id, virtual and physical size (for example the base
  copy of an image its image cache holds). The chain sent stops above the
  first parent whose identity, and whose whole parent chain's, the
  destination holds; the received chain is linked onto that held VDI, which
  is only read (see :func:`choose_held`).
* **Resize down** (a smaller root disk): only for one ext3/ext4 partition;
  the guest is powered off first and dom0 writes a shrunk copy of the root
  disk, which is sent (or used) instead of it: see :mod:`xenapi_driver.resize_down`.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import ssl
import tempfile
import urllib.parse
import uuid as uuidlib
from collections.abc import Callable, Iterator
from typing import Any

from nova import exception as nova_exception
from nova.virt import driver as virt_driver
from xenapi_driver import conf as xconf
from xenapi_driver import exception as xexc
from xenapi_driver import resize_down, vm_utils
from xenapi_driver import vmops as vmops_mod

LOG = logging.getLogger(__name__)

GiB = 1024**3
MiB = 1024**2

JOURNAL_KEY = "nova_resize"  # VM other_config: JSON journal of the steps done
RESIZE_OF_KEY = "nova_resize_of"  # kept original VM: the instance UUID it belongs to
INCOMING_KEY = "nova_resize_incoming"  # destination VDI imported but not yet given to a VM
SNAPSHOT_KEY = "nova_resize_snapshot"  # source snapshot VDI made by a resize (destroyed at the end)
KEPT_SUFFIX = "-orig"
FILE_SR_TYPES = frozenset({"ext", "nfs", "file", "ext4", "local"})
COPY_CHUNK = 4 * MiB
HTTP_TIMEOUT = 120.0

#: Where ``MigrateOps.step_hook`` fires (tests inject failures there): source, then destination.
STEP_HOOKS = (
    "snapshot",
    "copy_parent",
    "power_off",
    "rename",
    "copy_leaf",
    "import",
    "create_vm",
    "power_on",
)

# The steps of migrate_disk_and_power_off, in order (the journal's "steps" list).
STEPS = (
    "checked",
    "snapshotted",
    "parents_copied",
    "powered_off",
    "renamed",
    "leaves_copied",
    "cloned",
)


class ResizeStepFailed(Exception):
    """Internal: a step failed; carries the reason shown to the user."""


def _flavor_sizes(flavor: Any) -> dict[str, int]:
    return {
        "root_gb": int(getattr(flavor, "root_gb", 0) or 0),
        "ephemeral_gb": int(getattr(flavor, "ephemeral_gb", 0) or 0),
        "swap_mb": int(getattr(flavor, "swap", 0) or 0),
    }


def _refuse(reason: str) -> nova_exception.InstanceFaultRollback:
    """Nova's way to refuse a resize and keep the instance as it was (ACTIVE, not ERROR)."""
    return nova_exception.InstanceFaultRollback(inner_exception=nova_exception.ResizeError(reason=reason))


def dest_url(connection_url: str, dest: str) -> str:
    """The destination host's XAPI URL: our own URL's scheme and port, the destination's address."""
    parts = urllib.parse.urlsplit(connection_url)
    host = f"[{dest}]" if ":" in dest and not dest.startswith("[") else dest
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urllib.parse.urlunsplit((parts.scheme or "https", netloc, parts.path or "/", "", ""))


class MigrateOps:
    """Resize and cold migration for one compute (source and destination roles)."""

    def __init__(
        self,
        session: Any,
        vmops: Any,
        *,
        dest_session_factory: Callable[[str], Any] | None = None,
        volumeops: Any = None,
    ) -> None:
        self._session = session
        self._vmops = vmops
        #: VolumeOps (Cinder volumes): detached from the source at power-off, attached to the
        #: destination VM by finish_migration, re-attached to the original on revert.
        self._volumeops = volumeops if volumeops is not None else getattr(vmops, "volumeops", None)
        self._dest_session_factory = dest_session_factory or self._open_dest_session
        #: Test hook: called with each step name just before the step runs.
        self.step_hook: Callable[[str], None] | None = None

    # ------------------------------------------------------------ small helpers

    def _hook(self, step: str) -> None:
        if self.step_hook is not None:
            self.step_hook(step)

    @staticmethod
    def _progress(instance: Any, percent: int) -> None:
        """Nova shows ``instance.progress`` to users; a failed save never fails the resize."""
        instance.progress = int(percent)
        try:
            instance.save()
        except Exception as exc:  # noqa: BLE001 - progress is informative only
            LOG.debug("Could not save progress %s of %s: %s", percent, instance.uuid, exc)

    def _open_dest_session(self, dest: str) -> Any:
        from xenapi_driver.session import XenAPISession

        opts = xconf.CONF.xenserver
        return XenAPISession(
            dest_url(opts.connection_url, dest),
            opts.connection_username,
            opts.connection_password,
            originator=opts.originator,
            concurrent=2,
            login_timeout=opts.login_timeout,
            ca_file=opts.ca_file,
            insecure=opts.insecure,
        )

    @contextlib.contextmanager
    def _dest_session(self, dest: str) -> Iterator[Any]:
        if dest == self._session.host_address:
            yield self._session
            return
        session = self._dest_session_factory(dest)
        try:
            yield session
        finally:
            with contextlib.suppress(Exception):
                session.close()

    def _journal(self, vm_ref: str) -> dict[str, Any]:
        other = self._session.call_xenapi("VM.get_other_config", vm_ref)
        try:
            return json.loads(other.get(JOURNAL_KEY) or "{}")
        except ValueError:
            return {}

    def _write_journal(self, vm_ref: str, journal: dict[str, Any]) -> None:
        with contextlib.suppress(xexc.XenAPIError):
            self._session.call_xenapi("VM.remove_from_other_config", vm_ref, JOURNAL_KEY)
        self._session.call_xenapi(
            "VM.add_to_other_config", vm_ref, JOURNAL_KEY, json.dumps(journal, sort_keys=True)
        )

    def _step_done(self, vm_ref: str, journal: dict[str, Any], step: str) -> None:
        journal.setdefault("steps", []).append(step)
        self._write_journal(vm_ref, journal)

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

    def _kept(self, instance: Any) -> tuple[str, dict[str, Any]] | None:
        """The original VM kept for revert (or the instance VM with an open journal)."""
        for name in (instance.name + KEPT_SUFFIX, instance.name):
            for ref in self._session.call_xenapi("VM.get_by_name_label", name):
                rec = self._session.get_rec("VM", ref)
                if rec is None:
                    continue
                other = rec.get("other_config") or {}
                if other.get(RESIZE_OF_KEY) == instance.uuid or (
                    JOURNAL_KEY in other and other.get(vm_utils.NOVA_UUID_KEY) == instance.uuid
                ):
                    return ref, rec
        return None

    # ------------------------------------------------------------ checks

    def _check(self, instance: Any, flavor: Any, disks: list[dict[str, Any]], block_device_info: Any) -> None:
        old = _flavor_sizes(instance.flavor)
        new = _flavor_sizes(flavor)
        # A root volume is no Nova disk (no nova_disk role): nothing to size or send.
        boot_from_volume = not any(d["role"] == "root" for d in disks)
        if new["ephemeral_gb"] < old["ephemeral_gb"]:
            raise _refuse(
                f"cannot shrink the ephemeral disk from {old['ephemeral_gb']} GiB to "
                f"{new['ephemeral_gb']} GiB (its data would be lost); choose a flavor with "
                f"ephemeral_gb >= {old['ephemeral_gb']}"
            )
        if not boot_from_volume:
            if new["root_gb"] == 0 and old["root_gb"] > 0:
                raise _refuse(
                    f"cannot resize the root disk from {old['root_gb']} GiB to a flavor with root_gb 0"
                )
            root = next(d for d in disks if d["role"] == "root")
            current = int(root["rec"]["virtual_size"])
            if new["root_gb"] and new["root_gb"] * GiB < current:
                # Resize down: only a root disk with one ext3/ext4 partition (resize_down.py).
                try:
                    resize_down.check(self._session, root, new["root_gb"] * GiB, FILE_SR_TYPES)
                except resize_down.ShrinkRefused as exc:
                    raise _refuse(
                        f"resizing the root disk down ({current / GiB:g} GiB to {new['root_gb']} GiB) "
                        f"is not possible: {exc.reason}; choose a flavor with root_gb >= "
                        f"{-(-current // GiB)}"
                    ) from None

    def _mode(self, dest: str, disks: list[dict[str, Any]]) -> str:
        """``same-host``, ``shared`` (destination sees the SR), or the configured transport."""
        if dest == self._session.host_address:
            return "same-host"
        hosts = self._session.get_all_records_where("host", f'field "address" = "{vm_utils.quote(dest)}"')
        if hosts and disks:
            dest_host = next(iter(hosts))
            if all(self._sr_attached_to(d["rec"]["SR"], dest_host) for d in disks):
                return "shared"
        transport = xconf.CONF.xenserver.migration_transport
        if transport == "rsync":
            for disk in disks:
                sr = self._session.call_xenapi("SR.get_record", disk["rec"]["SR"])
                if sr["type"] not in FILE_SR_TYPES:
                    raise _refuse(
                        f"the {disk['role']} disk is on a {sr['type']} SR ({sr['name_label']}); "
                        "the rsync migration transport needs VHD files on a file SR (EXT, NFS); "
                        "set [xenserver] migration_transport = xapi"
                    )
        return transport

    def _sr_attached_to(self, sr_ref: str, host_ref: str) -> bool:
        expr = (
            f'field "SR" = "{vm_utils.quote(sr_ref)}" and field "host" = "{vm_utils.quote(host_ref)}" '
            'and field "currently_attached" = "true"'
        )
        return bool(self._session.get_all_records_where("PBD", expr))

    # ------------------------------------------------------------ source: migrate

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
        self._check(instance, flavor, disks, block_device_info)
        mode = self._mode(dest, disks)
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
        sent = []
        for disk in journal["disks"]:
            self._hook("clone")
            src = self._session.call_xenapi("VDI.get_by_uuid", disk["uuid"])
            clone = self._session.call_xenapi("VDI.clone", src, {})
            clone_uuid = self._session.call_xenapi("VDI.get_uuid", clone)
            self._session.call_xenapi("VDI.add_to_other_config", clone, INCOMING_KEY, instance.uuid)
            journal["snapshots"].append(clone_uuid)  # destroyed on revert like snapshots
            self._write_journal(vm_ref, journal)
            sent.append({"role": disk["role"], "device": disk["device"], "vdi_uuid": clone_uuid})
        self._step_done(vm_ref, journal, "cloned")
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
        chains = []
        for disk in disks:
            self._hook("snapshot")
            snap = self._session.call_xenapi("VDI.snapshot", disk["ref"], {})
            self._session.call_xenapi("VDI.add_to_other_config", snap, SNAPSHOT_KEY, instance.uuid)
            journal["snapshots"].append(self._session.call_xenapi("VDI.get_uuid", snap))
            self._write_journal(vm_ref, journal)
            chain = self._chain(self._session, disk["rec"]["uuid"])
            sr_uuid = self._session.call_xenapi("SR.get_uuid", disk["rec"]["SR"])
            chains.append({"disk": disk, "chain": chain, "sr_uuid": sr_uuid})
        self._step_done(vm_ref, journal, "snapshotted")
        self._progress(instance, 10)

        with contextlib.ExitStack() as stack:
            copier = (
                _XapiCopier(self._session, stack.enter_context(self._dest_session(dest)), instance)
                if transport == "xapi"
                else _RsyncCopier(self._session, dest, instance)
            )
            journal["transport"] = transport
            # 2. Immutable parents while the guest runs, but none the destination already holds.
            self._find_held(dest, chains, stack, getattr(copier, "dest_session", None))
            held = {
                f"{i['disk']['role']}-{i['disk']['device']}": i["held"]["vdi_uuid"]
                for i in chains
                if i.get("held")
            }
            if held:
                journal["held"] = held
                self._write_journal(vm_ref, journal)
            total = sum(_send_length(c) - 1 for c in chains) or 1
            done = 0
            for item in chains:
                item["target"] = copier.begin(item)
                for seq in range(_send_length(item) - 1, 0, -1):
                    self._hook("copy_parent")
                    copier.send(item, seq)
                    done += 1
                    self._progress(instance, 10 + 50 * done // total)
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

    def _find_held(
        self, dest: str, chains: list[dict[str, Any]], stack: contextlib.ExitStack, dsession: Any = None
    ) -> None:
        """Set ``item["held"]`` for each chain whose parents the destination already holds.

        The destination is asked through its XAPI (``host.call_plugin`` of
        ``migration.vhd_identities`` on a session opened like the xapi
        transport's, with this compute's credentials) for both transports: the
        rsync transport's SSH trust is dom0 to dom0, out of nova-compute's reach.
        Anything that stops the lookup (no XAPI session to the destination, a
        non-file SR, older plug-ins) only means every parent is sent, as before.
        """
        wanted = [item for item in chains if len(item["chain"]) > 1]
        if not wanted:
            return
        try:
            if dsession is None:
                dsession = stack.enter_context(self._dest_session(dest))
            dest_sr = self._dest_file_sr(dsession)
            if dest_sr is None:
                return
            sources: dict[int, list[dict[str, Any] | None]] = {}
            for index, item in enumerate(wanted):
                sr_type = self._session.call_xenapi("SR.get_type", item["disk"]["rec"]["SR"])
                if sr_type not in FILE_SR_TYPES:
                    continue
                parents = [member["uuid"] for member in item["chain"][1:]]
                found = json.loads(
                    self._session.call_plugin(
                        "migration",
                        "vhd_identities",
                        {"sr_path": f"/var/run/sr-mount/{item['sr_uuid']}", "vdi_uuids": json.dumps(parents)},
                    )
                )
                by_vdi = {v["vdi_uuid"]: v for v in found["vhds"]}
                sources[index] = [by_vdi.get(vdi) for vdi in parents]
            unique_ids = sorted({v["unique_id"] for ids in sources.values() for v in ids if v})
            if not unique_ids:
                return
            held = json.loads(
                dsession.call_plugin(
                    "migration",
                    "vhd_identities",
                    {"sr_path": f"/var/run/sr-mount/{dest_sr}", "unique_ids": json.dumps(unique_ids[:256])},
                )
            )
        except Exception as exc:  # noqa: BLE001 - an optimisation: on any doubt, send everything
            LOG.warning("Could not ask %s which parents it holds (%s); sending every parent", dest, exc)
            return
        for index, ids in sources.items():
            choice = choose_held(ids, held["vhds"])
            if choice is not None:
                seq, entry = choice
                item = wanted[index]
                item["held"] = {
                    "seq": seq,
                    "sr_uuid": dest_sr,
                    **{k: entry[k] for k in ("vdi_uuid", "unique_id", "virtual_size", "physical_size")},
                }
                LOG.info(
                    "%s holds parent %d of %s's %s disk intact (VDI %s): not sending it and its parents",
                    dest, seq, item["disk"]["rec"]["uuid"], item["disk"]["role"], entry["vdi_uuid"],
                )  # fmt: skip

    @staticmethod
    def _dest_file_sr(dsession: Any) -> str | None:
        """UUID of the destination's instance SR when it is a file SR (VHD files the plug-in reads)."""
        from xenapi_driver import hostops

        sr_ref = hostops.HostOps(dsession).instance_sr()
        if not sr_ref:
            return None
        sr = dsession.call_xenapi("SR.get_record", sr_ref)
        return sr["uuid"] if sr["type"] in FILE_SR_TYPES else None

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
            for disk in journal["disks"]:
                if disk["role"] == "root":
                    continue
                self._hook("clone")
                src = self._session.call_xenapi("VDI.get_by_uuid", disk["uuid"])
                clone = self._session.call_xenapi("VDI.clone", src, {})
                clone_uuid = self._session.call_xenapi("VDI.get_uuid", clone)
                self._session.call_xenapi("VDI.add_to_other_config", clone, INCOMING_KEY, instance.uuid)
                journal["snapshots"].append(clone_uuid)
                self._write_journal(vm_ref, journal)
                sent.append({"role": disk["role"], "device": disk["device"], "vdi_uuid": clone_uuid})
            self._step_done(vm_ref, journal, "cloned")
            return sent
        # Copy: the shrunk root as a one-member chain, the other disks' chains as usual
        # (the guest is already off: no second pass for the leaves).
        chains = []
        for disk in disks:
            sr_uuid = self._session.call_xenapi("SR.get_uuid", disk["rec"]["SR"])
            if disk["role"] == "root":
                chain = [{"uuid": copy["uuid"], "virtual_size": new_size}]
            else:
                self._hook("snapshot")
                snap = self._session.call_xenapi("VDI.snapshot", disk["ref"], {})
                self._session.call_xenapi("VDI.add_to_other_config", snap, SNAPSHOT_KEY, instance.uuid)
                journal["snapshots"].append(self._session.call_xenapi("VDI.get_uuid", snap))
                self._write_journal(vm_ref, journal)
                chain = self._chain(self._session, disk["rec"]["uuid"])
            chains.append({"disk": disk, "chain": chain, "sr_uuid": sr_uuid})
        with contextlib.ExitStack() as stack:
            copier = (
                _XapiCopier(self._session, stack.enter_context(self._dest_session(journal["dest"])), instance)
                if mode == "xapi"
                else _RsyncCopier(self._session, journal["dest"], instance)
            )
            journal["transport"] = mode
            total = sum(len(c["chain"]) for c in chains)
            done = 0
            for item in chains:
                item["target"] = copier.begin(item)
                for seq in range(len(item["chain"]) - 1, -1, -1):
                    self._hook("copy_leaf" if seq == 0 else "copy_parent")
                    copier.send(item, seq)
                    done += 1
                    self._progress(instance, 50 + 40 * done // total)
        self._step_done(vm_ref, journal, "leaves_copied")
        return [
            {
                "role": item["disk"]["role"],
                "device": item["disk"]["device"],
                "chain_length": len(item["chain"]),
                "transport": mode,
                "stats": {str(k): v for k, v in item.get("stats", {}).items()},
                **item["target"],
            }
            for item in chains
        ]

    def _rollback_source(self, instance: Any, vm_ref: str, block_device_info: Any) -> None:
        """Undo a failed migrate_disk_and_power_off: the instance is back as it was."""
        try:
            self._restore_original(instance, vm_ref, power_on=None, block_device_info=block_device_info)
        except Exception:  # noqa: BLE001 - report, the original error is what the user needs
            LOG.exception("Rolling back the migration of %s failed", instance.uuid)

    # ------------------------------------------------------------ source: revert / confirm

    def _restore_original(
        self, instance: Any, vm_ref: str, power_on: bool | None, block_device_info: Any = None
    ) -> None:
        """Bring the kept VM back under its name; drop snapshots, clones and staged copies.

        ``power_on=None`` restores the power state recorded in the journal.
        Every action is idempotent, so a revert after a crash at any step works.
        """
        journal = self._journal(vm_ref)
        resize_down.cleanup(self._session, instance.uuid, journal)
        for snap_uuid in journal.get("snapshots", []):
            with contextlib.suppress(xexc.XenAPIError):
                ref = self._session.call_xenapi("VDI.get_by_uuid", snap_uuid)
                if not self._session.call_xenapi("VDI.get_VBDs", ref):
                    self._session.call_xenapi("VDI.destroy", ref)
        dest = journal.get("dest")
        if dest and journal.get("mode") in ("rsync", "xapi"):
            self._clean_destination(instance, dest, journal)
        other = self._session.call_xenapi("VM.get_other_config", vm_ref)
        if other.get(vm_utils.NOVA_UUID_KEY) != instance.uuid:
            with contextlib.suppress(xexc.XenAPIError):
                self._session.call_xenapi("VM.remove_from_other_config", vm_ref, vm_utils.NOVA_UUID_KEY)
            self._session.call_xenapi("VM.add_to_other_config", vm_ref, vm_utils.NOVA_UUID_KEY, instance.uuid)
        self._session.call_xenapi("VM.set_name_label", vm_ref, instance.name)
        for key in (RESIZE_OF_KEY, JOURNAL_KEY):
            with contextlib.suppress(xexc.XenAPIError):
                self._session.call_xenapi("VM.remove_from_other_config", vm_ref, key)
        self._vmops._refs[instance.uuid] = vm_ref  # noqa: SLF001 - keep VMOps' cache right
        if (
            self._volumeops is not None
            and "volumes_detached" in journal.get("steps", [])
            and virt_driver.block_device_info_get_mapping(block_device_info)
        ):
            self._volumeops.attach_block_devices(vm_ref, block_device_info)
        if power_on is None:
            power_on = journal.get("power_state", vmops_mod.RUNNING) == vmops_mod.RUNNING
        state = self._session.call_xenapi("VM.get_power_state", vm_ref)
        if power_on and state == vmops_mod.HALTED:
            self._vmops.power_on(instance)

    def _clean_destination(self, instance: Any, dest: str, journal: dict[str, Any]) -> None:
        """Remove what a copy left on the destination (staging files, incoming VDIs); best effort."""
        try:
            with self._dest_session(dest) as dsession:
                if journal.get("mode") == "rsync":
                    for disk in journal.get("disks", []):
                        dsession.call_plugin(
                            "migration",
                            "cleanup_received",
                            {"instance_uuid": _staging_id(instance.uuid, disk)},
                        )
                destroy_incoming(dsession, instance.uuid)
        except Exception as exc:  # noqa: BLE001 - the destination may be down; its init_host cleans up
            LOG.warning("Could not clean destination %s after migrating %s: %s", dest, instance.uuid, exc)

    def finish_revert_migration(
        self,
        context: Any,
        instance: Any,
        network_info: Any,
        migration: Any,
        block_device_info: Any = None,
        power_on: bool = True,
    ) -> None:
        """Bring the original back (also Nova's recovery after a crash in RESIZE_MIGRATING)."""
        kept = self._kept(instance)
        if kept is None:
            # Nothing was kept (crash before the journal existed): the instance VM is untouched.
            found = self._vmops.lookup(instance)
            if found is None:
                raise nova_exception.InstanceNotFound(instance_id=instance.uuid)
            if power_on:
                self._vmops.power_on(instance)
            return
        vm_ref, _ = kept
        # Same-host resize: the new VM is this host's too; Nova's destroy on the destination
        # normally removed it already. Remove it if it is still here.
        current = self._vmops.lookup(instance)
        if current is not None and current[0] != vm_ref:
            self._vmops._destroy_vm(current[0])  # noqa: SLF001
        self._restore_original(instance, vm_ref, power_on=power_on, block_device_info=block_device_info)

    def confirm_migration(self, context: Any, migration: Any, instance: Any, network_info: Any) -> None:
        """Destroy the kept original VM, its disks and the resize's snapshots."""
        kept = self._kept(instance)
        if kept is None:
            LOG.info("No original VM of %s is kept; nothing to confirm", instance.uuid)
            return
        vm_ref, rec = kept
        if (rec.get("other_config") or {}).get(vm_utils.NOVA_UUID_KEY) == instance.uuid:
            raise nova_exception.InstanceInvalidState(
                attr="task_state", instance_uuid=instance.uuid, state="migrating",
                method="confirm_migration (the migration never completed on this host)",
            )  # fmt: skip
        journal = self._journal(vm_ref)
        new_vdis: set[str] = set()
        current = self._vmops.lookup(instance)
        if current is not None:  # same host: never destroy what the new VM uses
            new_vdis = set(self._vmops._vdis_of(current[0]))  # noqa: SLF001
        for snap_uuid in journal.get("snapshots", []):
            with contextlib.suppress(xexc.XenAPIError):
                ref = self._session.call_xenapi("VDI.get_by_uuid", snap_uuid)
                if ref not in new_vdis:
                    self._session.call_xenapi("VDI.destroy", ref)
        self._vmops._destroy_vm(vm_ref, destroy_disks=True, keep_vdis=frozenset(new_vdis))  # noqa: SLF001

    # ------------------------------------------------------------ destination

    def finish_migration(
        self,
        context: Any,
        migration: Any,
        instance: Any,
        disk_info: str,
        network_info: Any,
        image_meta: Any,
        resize_instance: bool,
        block_device_info: Any = None,
        power_on: bool = True,
    ) -> None:
        """Import the received disks, size them for the new flavor, create and start the VM."""
        info = json.loads(disk_info)
        vmops = self._vmops
        flavor = vmops_mod._flavor(instance)  # noqa: SLF001 - the new flavor, as VMOps reads it
        undo = vmops_mod._Undo()  # noqa: SLF001
        sr_ref = vmops._sr_ref()  # noqa: SLF001
        try:
            # A previous attempt that died half-way: start clean.
            destroy_incoming(self._session, instance.uuid, keep=self._expected_vdis(info))
            vdis: dict[str, str] = {}
            for disk in info["disks"]:
                self._hook("import")
                vdi = self._receive_disk(instance, info, disk, sr_ref)
                undo.add(f"{disk['role']} disk", lambda v=vdi: _destroy_vdi(self._session, v))
                vdis[disk["role"]] = vdi
            if "root" in vdis and flavor["root_gb"]:
                self._grow(vdis["root"], flavor["root_gb"] * GiB)
            if flavor["ephemeral_gb"]:
                if "ephemeral" in vdis:
                    self._grow(vdis["ephemeral"], flavor["ephemeral_gb"] * GiB)
                else:
                    vdis["ephemeral"] = vmops._create_vdi(  # noqa: SLF001
                        sr_ref, instance, "ephemeral", flavor["ephemeral_gb"] * GiB, undo
                    )
            self._hook("create_vm")
            networks = vmops._networks_by_bridge(network_info)  # noqa: SLF001
            xenstore = vmops._xenstore_data(instance, network_info)  # noqa: SLF001
            record = vmops._vm_record(instance, image_meta, flavor, xenstore, sr_ref)  # noqa: SLF001
            vm_ref = self._session.call_xenapi("VM.create", record)
            undo.add(f"VM {vm_ref}", lambda: vmops._destroy_vm(vm_ref, destroy_disks=False))  # noqa: SLF001
            vmops._refs[instance.uuid] = vm_ref  # noqa: SLF001
            if "root" in vdis:
                vmops._create_vbd(vm_ref, vdis["root"], vmops_mod.DEVICE_ROOT, bootable=True)  # noqa: SLF001
            if flavor["swap_mb"]:
                swap = vmops._create_vdi(sr_ref, instance, "swap", flavor["swap_mb"] * MiB, undo)  # noqa: SLF001
                vmops._create_vbd(vm_ref, swap, vmops_mod.DEVICE_SWAP, bootable=False)  # noqa: SLF001
            if "ephemeral" in vdis:
                vmops._create_vbd(vm_ref, vdis["ephemeral"], vmops_mod.DEVICE_EPHEMERAL, bootable=False)  # noqa: SLF001
            if self._volumeops is not None and virt_driver.block_device_info_get_mapping(block_device_info):
                self._volumeops.attach_block_devices(vm_ref, block_device_info)
            for device, vif in enumerate(network_info or []):
                vmops._create_vif(vm_ref, vif, device, networks[vmops._bridge_for(vif)])  # noqa: SLF001
            for vdi in vdis.values():
                with contextlib.suppress(xexc.XenAPIError):
                    self._session.call_xenapi("VDI.remove_from_other_config", vdi, INCOMING_KEY)
            if power_on:
                self._hook("power_on")
                with vmops._waiting_for_vifs(instance, network_info):  # noqa: SLF001
                    vmops._start(vm_ref)  # noqa: SLF001
                vmops._wait_running(instance, vm_ref)  # noqa: SLF001
        except Exception:
            LOG.exception("finish_migration of %s failed; removing what it created", instance.uuid)
            undo.rollback()
            if info.get("mode") == "rsync":
                for disk in info["disks"]:
                    with contextlib.suppress(Exception):
                        self._session.call_plugin(
                            "migration",
                            "cleanup_received",
                            {"instance_uuid": _staging_id(instance.uuid, disk)},
                        )
            raise

    @staticmethod
    def _expected_vdis(info: dict[str, Any]) -> set[str]:
        return {d["vdi_uuid"] for d in info["disks"] if d.get("vdi_uuid")}

    def _receive_disk(self, instance: Any, info: dict[str, Any], disk: dict[str, Any], sr_ref: str) -> str:
        """The VDI holding a received disk, tagged as the instance's (still 'incoming')."""
        mode = info["mode"]
        if mode == "rsync":
            sr = self._session.call_xenapi("SR.get_record", sr_ref)
            if sr["type"] not in FILE_SR_TYPES:
                raise nova_exception.MigrationError(
                    reason=f"the destination SR {sr['name_label']} is {sr['type']}: the rsync "
                    "transport imports VHD files into a file SR (EXT, NFS) only"
                )
            stack = [str(uuidlib.uuid4()) for _ in range(int(disk["chain_length"]))]
            args = {
                "instance_uuid": _staging_id(instance.uuid, disk),
                "sr_path": f"/var/run/sr-mount/{sr['uuid']}",
                "uuid_stack": json.dumps(stack),
            }
            held = disk.get("held_base")
            if held:  # the received chain's base is linked onto the VHD this host held (read only)
                args["base_vdi_uuid"] = held["vdi_uuid"]
                args["base_physical_size"] = str(held["physical_size"])
            result = json.loads(self._session.call_plugin("migration", "move_vhds_into_sr", args))
            vdi = self._introduce(sr_ref, result["root"]["uuid"], instance, disk)
        else:  # xapi transport, same host, shared SR: the VDI already exists here
            vdi = self._session.call_xenapi("VDI.get_by_uuid", disk["vdi_uuid"])
        for key, value in (
            (vm_utils.NOVA_UUID_KEY, instance.uuid),
            (vmops_mod.DISK_ROLE_KEY, disk["role"]),
            (INCOMING_KEY, instance.uuid),
        ):
            with contextlib.suppress(xexc.XenAPIError):
                self._session.call_xenapi("VDI.remove_from_other_config", vdi, key)
            self._session.call_xenapi("VDI.add_to_other_config", vdi, key, value)
        self._session.call_xenapi("VDI.set_name_label", vdi, f"{instance.name} {disk['role']}")
        return vdi

    def _introduce(self, sr_ref: str, leaf_uuid: str, instance: Any, disk: dict[str, Any]) -> str:
        """Make XAPI know the imported leaf without an ``SR.scan``.

        A scan starts the SR's garbage collector, which may coalesce the new
        chain first: the guest would wait for a copy proportional to the whole
        disk instead of only the leaf. The hidden parents are picked up by the
        next scan, as XenServer's storage manager does for base copies.
        """
        try:
            return self._session.call_xenapi(
                "VDI.introduce",
                leaf_uuid,
                f"{instance.name} {disk['role']}",
                f"{disk['role']} disk of Nova instance {instance.uuid}",
                sr_ref,
                "user",
                False,
                False,
                {INCOMING_KEY: instance.uuid},
                leaf_uuid,
                {},
                {},
            )
        except xexc.XenAPIError as exc:
            LOG.info("VDI.introduce of %s failed (%s); scanning the SR instead", leaf_uuid, exc.code)
            self._session.call_xenapi("SR.scan", sr_ref)
            return self._session.call_xenapi("VDI.get_by_uuid", leaf_uuid)

    def _grow(self, vdi: str, wanted: int) -> None:
        if int(self._session.call_xenapi("VDI.get_virtual_size", vdi)) < wanted:
            self._session.call_xenapi("VDI.resize", vdi, str(wanted))

    # ------------------------------------------------------------ crash recovery

    def recover_host(self) -> list[str]:
        """``init_host``: remove disks a killed finish_migration imported but never attached.

        The source side needs nothing here: Nova's own ``init_host`` calls
        ``finish_revert_migration`` for instances left in RESIZE_MIGRATING,
        which restores the kept original from its journal.
        """
        removed = []
        expr = 'field "is_a_snapshot" = "false"'
        for ref, rec in self._session.get_all_records_where("VDI", expr).items():
            if INCOMING_KEY in (rec.get("other_config") or {}) and not rec.get("VBDs"):
                if self._vdi_on_this_host(rec):
                    _destroy_vdi(self._session, ref)
                    removed.append(rec["uuid"])
        return removed

    def _vdi_on_this_host(self, rec: dict[str, Any]) -> bool:
        return self._sr_attached_to(rec["SR"], self._session.host_ref)


def _send_length(item: dict[str, Any]) -> int:
    """How many VHDs of a chain are sent: all, or those above the parent the destination holds."""
    return int(item["held"]["seq"]) if item.get("held") else len(item["chain"])


def _same_identity(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(a[k] == b[k] for k in ("unique_id", "virtual_size", "physical_size"))


def choose_held(
    parents: list[dict[str, Any] | None], held: list[dict[str, Any]]
) -> tuple[int, dict[str, Any]] | None:
    """The first parent (from the leaf) the destination holds intact, with its whole parent chain.

    ``parents``: the source chain's identities for sequence numbers 1..n (the
    leaf is 0 and always sent; None where the source could not vouch for a
    member). ``held``: the destination's hidden, intact VHDs
    (``vhd_identities``). Returns ``(seq, held entry)``, or None to send all.

    A parent counts as held only when a destination VHD has its unique id,
    virtual size and physical size AND that VHD's own parents, followed on
    the destination by file name, match the source's remaining parents one by
    one down to a base with no parent: what is not sent is verified, not
    assumed. The shallowest such parent wins (fewest bytes sent).
    """
    by_vdi = {entry["vdi_uuid"]: entry for entry in held}
    count = len(parents)

    def chain_matches(index: int, entry: dict[str, Any]) -> bool:
        for j in range(index, count):
            source = parents[j]
            if source is None or not _same_identity(source, entry):
                return False
            if j + 1 == count:
                return entry.get("parent_unique_id") is None
            below = parents[j + 1]
            nxt = by_vdi.get(entry.get("parent_vdi_uuid") or "")
            if below is None or nxt is None or entry.get("parent_unique_id") != below["unique_id"]:
                return False
            entry = nxt
        return False

    for index, source in enumerate(parents):
        if source is None:
            continue
        for entry in sorted(held, key=lambda e: e["vdi_uuid"]):
            if _same_identity(source, entry) and chain_matches(index, entry):
                return index + 1, entry
    return None


def _staging_id(instance_uuid: str, disk: dict[str, Any]) -> str:
    """The ``/images/instance<id>/`` directory of one disk: the plug-ins take one chain per id."""
    return str(uuidlib.uuid5(uuidlib.UUID(instance_uuid), f"{disk['role']}-{disk['device']}"))


def _destroy_vdi(session: Any, vdi: str) -> None:
    with contextlib.suppress(xexc.XenAPIError):
        session.call_xenapi("VDI.destroy", vdi)


def destroy_incoming(session: Any, instance_uuid: str, keep: set[str] | frozenset[str] = frozenset()) -> None:
    """Destroy VDIs received for ``instance_uuid`` that no VM uses yet (a failed import's leftovers)."""
    expr = 'field "is_a_snapshot" = "false"'
    for ref, rec in session.get_all_records_where("VDI", expr).items():
        other = rec.get("other_config") or {}
        if other.get(INCOMING_KEY) == instance_uuid and not rec.get("VBDs") and rec["uuid"] not in keep:
            _destroy_vdi(session, ref)


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
        sent = _stream(self._session, self._dest, query, item["target"]["vdi_uuid"])
        item.setdefault("stats", {})[seq] = {"literal_bytes": sent}


def _session_id(session: Any) -> contextlib.AbstractContextManager[str]:
    from xenapi_driver.volumeops import session_id

    return session_id(session)


def _connect(base_url: str) -> http.client.HTTPConnection:
    parts = urllib.parse.urlsplit(base_url)
    if parts.scheme == "https":
        opts = xconf.CONF.xenserver
        context = ssl.create_default_context(cafile=opts.ca_file or None)
        if opts.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return http.client.HTTPSConnection(parts.hostname, parts.port, timeout=HTTP_TIMEOUT, context=context)
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=HTTP_TIMEOUT)


def _host_url(session: Any, host_ref: str) -> str:
    address = session.call_xenapi("host.get_address", host_ref)
    parts = urllib.parse.urlsplit(session.master_url)
    host = f"[{address}]" if ":" in address else address
    return f"{parts.scheme}://{host}:{parts.port}/" if parts.port else f"{parts.scheme}://{host}/"


def _stream(src: Any, dst: Any, query: dict[str, str], dest_vdi_uuid: str) -> int:
    """GET export_raw_vdi on the source host, PUT import_raw_vdi on the destination host.

    The stream is spooled to a temporary file first: import_raw_vdi needs a
    Content-Length and a VHD stream's length is unknown until it ends.
    """
    with tempfile.TemporaryFile(prefix="xenapi-resize-") as spool, _session_id(src) as sid:
        conn = _connect(_host_url(src, src.host_ref))
        try:
            path = "/export_raw_vdi?" + urllib.parse.urlencode({"session_id": sid, **query})
            for _hop in range(4):
                conn.request("GET", path)
                resp = conn.getresponse()
                if resp.status not in (301, 302, 303, 307):
                    break
                location = urllib.parse.urlsplit(resp.getheader("location") or "")
                resp.read()
                conn.close()
                conn = _connect(f"{location.scheme}://{location.netloc}/")
                path = f"{location.path}?{location.query}"
            if resp.status != 200:
                raise ResizeStepFailed(f"export_raw_vdi of VDI {query['vdi']} answered HTTP {resp.status}")
            while chunk := resp.read(COPY_CHUNK):
                spool.write(chunk)
        finally:
            conn.close()
        length = spool.tell()
        spool.seek(0)
        with _session_id(dst) as dsid:
            out = _connect(_host_url(dst, dst.host_ref))
            try:
                out.putrequest(
                    "PUT",
                    "/import_raw_vdi?"
                    + urllib.parse.urlencode({"session_id": dsid, "vdi": dest_vdi_uuid, "format": "vhd"}),
                )
                out.putheader("Content-Length", str(length))
                out.endheaders()
                while chunk := spool.read(COPY_CHUNK):
                    out.send(chunk)
                answer = out.getresponse()
                body = answer.read()
                if answer.status != 200:
                    raise ResizeStepFailed(
                        f"import_raw_vdi into VDI {dest_vdi_uuid} answered HTTP {answer.status}: "
                        f"{body[:300]!r}"
                    )
            finally:
                out.close()
    return length
