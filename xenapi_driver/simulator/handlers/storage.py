"""Storage semantics of the simulator: SR, PBD, VDI and VBD as XAPI and its storage manager behave.

Disks are real files handled by :mod:`xenapi_driver.simulator.sr_backend`; this module keeps
XAPI's database in step with them (reconciling by ``location`` like ``SR.scan``) and enforces
XAPI's constraints on attaching disks to VMs.  The helpers at the top are shared with the VM,
migration and HTTP disk handlers.
"""

from __future__ import annotations

import datetime
import threading
import uuid as uuidlib
from pathlib import Path
from typing import Any

from xenapi_driver.simulator.errors import XapiError
from xenapi_driver.simulator.handlers import devices
from xenapi_driver.simulator.registry import message, reset_hook
from xenapi_driver.simulator.schema import NULL_REF, XDate
from xenapi_driver.simulator.sr_backend import DiskInfo, FileSR, IsoSR, LunSR, SRBackendError, lun_scsi_id

FILE_SR_TYPES = {"ext", "nfs", "file", "ext4", "local"}
LUN_SR_TYPES = {"iscsi", "lvmoiscsi"}
ISO_SR_TYPES = {"iso"}
DEFAULT_SR_SIZE = 512 * 1024**3

_BACKENDS: dict[str, Any] = {}
_BACKENDS_LOCK = threading.Lock()


# -- shared helpers --------------------------------------------------------------------------
def now() -> XDate:
    return XDate(datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H:%M:%SZ"))


def is_null(ref: str | None) -> bool:
    return not ref or ref == NULL_REF


def sim_host(pool, host_ref: str):
    """The :class:`SimHost` object behind a host reference of ``pool``."""
    for host in pool.hosts:
        if host.ref == host_ref:
            return host
    raise XapiError("HANDLE_INVALID", "host", host_ref)


def translate(exc: SRBackendError) -> XapiError:
    return XapiError(exc.code, *exc.params)


class backend_errors:
    """Context manager turning storage-manager failures into XAPI errors."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if isinstance(exc, SRBackendError):
            raise translate(exc) from None
        return False


def iscsi_root(world) -> Path:
    """Where simulated iSCSI targets keep their LUN files (one directory per target IQN)."""
    base = getattr(world, "iscsi_root", None)
    if base:
        return Path(base)
    root = getattr(world, "root", None)
    if root is None:
        raise XapiError("INTERNAL_ERROR", "the simulator has no iSCSI target directory")
    return Path(root) / "iscsi-targets"


def _pbds(db, sr_ref: str) -> list[str]:
    return list(db.get("SR", sr_ref)["PBDs"])


def sr_dir(pool, sr_ref: str) -> Path:
    """The directory of a file SR as seen from one of the hosts that has a PBD for it."""
    db = pool.db
    rec = db.get("SR", sr_ref)
    for pbd in _pbds(db, sr_ref):
        host_ref = db.get("PBD", pbd)["host"]
        try:
            host = sim_host(pool, host_ref)
        except XapiError:
            continue
        return host.sr_path(rec["uuid"])
    raise XapiError("SR_HAS_NO_PBDS", sr_ref)


def backend_of(pool, sr_ref: str, world=None):
    """The storage backend object for an SR (cached, so its lock is shared)."""
    db = pool.db
    rec = db.get("SR", sr_ref)
    sr_type = rec["type"]
    if sr_type in FILE_SR_TYPES:
        path = sr_dir(pool, sr_ref).resolve()
        key = f"file:{path}"
        with _BACKENDS_LOCK:
            backend = _BACKENDS.get(key)
            if backend is None:
                backend = _BACKENDS[key] = FileSR(path)
        backend.physical_size = int(rec["physical_size"]) or DEFAULT_SR_SIZE
        return backend
    device_config = _device_config(db, sr_ref)
    if sr_type in ISO_SR_TYPES:
        location = device_config.get("location") or str(sr_dir(pool, sr_ref))
        return IsoSR(location)
    if sr_type in LUN_SR_TYPES:
        target = device_config.get("targetIQN", "")
        with backend_errors():
            return LunSR(
                iscsi_root(world or getattr(pool, "world", None)), target, device_config.get("SCSIid")
            )
    raise XapiError("SR_OPERATION_NOT_SUPPORTED", sr_ref)


@reset_hook
def _forget_backends(pool) -> None:
    """Drop the cached backends of a pool's SRs: reset rebuilds them from empty directories."""
    roots = [str(h.root.resolve()) for h in pool.hosts] + [str(pool.dir.resolve())]
    with _BACKENDS_LOCK:
        for key in [k for k in _BACKENDS if any(k.startswith(f"file:{r}") for r in roots)]:
            del _BACKENDS[key]


def _device_config(db, sr_ref: str) -> dict[str, str]:
    for pbd in _pbds(db, sr_ref):
        return dict(db.get("PBD", pbd)["device_config"])
    return {}


def disk_path(pool, vdi_ref: str, world=None) -> Path:
    """The file holding a VDI's data (its leaf VHD, LUN file or ISO)."""
    db = pool.db
    vdi = db.get("VDI", vdi_ref)
    backend = backend_of(pool, vdi["SR"], world)
    with backend_errors():
        return Path(backend.path_of(vdi["location"]))


def vdi_allowed_operations(db, vdi_ref: str) -> list[str]:
    vdi = db.get("VDI", vdi_ref)
    if not vdi["managed"]:
        return ["forget"]
    sr_type = db.get("SR", vdi["SR"])["type"]
    attached = any(db.get("VBD", v)["currently_attached"] for v in vdi["VBDs"])
    ops = ["clone", "copy", "snapshot", "forget", "update", "generate_config"]
    if sr_type in FILE_SR_TYPES:
        if not attached:
            ops += ["destroy", "resize"]
        else:
            ops += ["mirror"]
    if sr_type in ISO_SR_TYPES | LUN_SR_TYPES:
        ops = ["forget", "update", "generate_config", "copy"]
    return sorted(set(ops))


def refresh_vdi(db, vdi_ref: str) -> None:
    db.set("VDI", vdi_ref, "allowed_operations", vdi_allowed_operations(db, vdi_ref))


def refresh_sr(pool, sr_ref: str, world=None) -> None:
    """Recompute an SR's size fields from its backend and records."""
    db = pool.db
    rec = db.get("SR", sr_ref)
    try:
        backend = backend_of(pool, sr_ref, world)
    except XapiError:
        return
    util = backend.physical_utilisation()
    alloc = sum(int(db.get("VDI", v)["virtual_size"]) for v in rec["VDIs"] if db.get("VDI", v)["managed"])
    size = int(rec["physical_size"]) or (DEFAULT_SR_SIZE if rec["type"] in FILE_SR_TYPES else util)
    db.update("SR", sr_ref, physical_utilisation=util, virtual_allocation=alloc, physical_size=size)


def _find_by_location(db, sr_ref: str, location: str) -> str | None:
    for ref in db.get("SR", sr_ref)["VDIs"]:
        if db.get("VDI", ref)["location"] == location:
            return ref
    return None


def record_disk(db, sr_ref: str, disk: DiskInfo, **fields: Any) -> str:
    """Create or update the VDI record for ``disk`` (matched by location); return its ref."""
    ref = _find_by_location(db, sr_ref, disk.location)
    sm_config = dict(disk.sm_config)
    values: dict[str, Any] = {
        "virtual_size": disk.virtual_size,
        "physical_utilisation": disk.physical_utilisation,
        "managed": disk.managed,
        "missing": False,
    }
    if ref is None:
        values.update(
            uuid=disk.uuid,
            SR=sr_ref,
            location=disk.location,
            type=disk.vdi_type,
            read_only=disk.read_only,
            sm_config=sm_config,
            name_label="base copy" if disk.hidden else "",
        )
        values.update(fields)
        with db.lock:
            ref = _create_with_uuid(db, "VDI", values)
    else:
        with db.lock:
            current = dict(db.get("VDI", ref)["sm_config"])
            current.pop("vhd-parent", None)
            current.update(sm_config)
            values["sm_config"] = current
            if disk.hidden:
                values["read_only"] = True
            values.update(fields)
            db.update("VDI", ref, **values)
    refresh_vdi(db, ref)
    return ref


def _create_with_uuid(db, cls: str, values: dict[str, Any]) -> str:
    """``db.create`` keeping a given uuid (file SR VDIs are named by their UUID)."""
    try:
        return db.create(cls, **values)
    except ValueError as exc:
        raise XapiError("UUID_INVALID", cls, str(values.get("uuid", ""))) from exc


def sync_sr(pool, sr_ref: str, found: dict[str, DiskInfo], world=None) -> None:
    """Reconcile the SR's VDI records with what is on disk (``SR.scan``'s second half)."""
    db = pool.db
    with db.lock:
        for disk in found.values():
            record_disk(db, sr_ref, disk)
        for ref in list(db.get("SR", sr_ref)["VDIs"]):
            vdi = db.get("VDI", ref)
            if vdi["location"] not in found:
                for vbd in list(vdi["VBDs"]):
                    db.update("VBD", vbd, VDI=NULL_REF, empty=True)
                db.destroy("VDI", ref)
        refresh_sr(pool, sr_ref, world)


def scan(pool, sr_ref: str, world=None) -> None:
    backend = backend_of(pool, sr_ref, world)
    with backend_errors():
        found = backend.scan()
    db = pool.db
    if isinstance(backend, IsoSR | LunSR):
        # Keep existing records' UUIDs: only the location identifies a disk on these SRs.
        for location, disk in found.items():
            ref = _find_by_location(db, sr_ref, location)
            if ref is not None:
                disk.uuid = db.get("VDI", ref)["uuid"]
    sync_sr(pool, sr_ref, found, world)
    if isinstance(backend, IsoSR):
        for location in found:
            ref = _find_by_location(db, sr_ref, location)
            if ref and not db.get("VDI", ref)["name_label"]:
                db.update("VDI", ref, name_label=location, read_only=True, sharable=True)


def vdi_backend(ctx_or_pool, vdi_ref: str, world=None):
    pool = getattr(ctx_or_pool, "pool", ctx_or_pool)
    vdi = pool.db.get("VDI", vdi_ref)
    return backend_of(pool, vdi["SR"], world), vdi


def _file_backend(ctx, vdi_ref: str, op: str) -> tuple[FileSR, dict]:
    backend, vdi = vdi_backend(ctx.pool, vdi_ref, ctx.world)
    if not isinstance(backend, FileSR):
        raise XapiError("SR_OPERATION_NOT_SUPPORTED", vdi["SR"])
    if not vdi["managed"]:
        raise XapiError("OPERATION_NOT_ALLOWED", f"VDI.{op} is not allowed on an unmanaged (base copy) VDI")
    return backend, vdi


def check_vdi_op(db, vdi_ref: str, op: str) -> None:
    """XAPI's VDI checks: an operation not in allowed_operations gets VDI_IN_USE or not allowed."""
    vdi = db.get("VDI", vdi_ref)
    if op in ("destroy", "resize") and any(db.get("VBD", v)["currently_attached"] for v in vdi["VBDs"]):
        raise XapiError("VDI_IN_USE", vdi_ref, op)
    if vdi["current_operations"]:
        task, other = next(iter(vdi["current_operations"].items()))
        raise XapiError("OTHER_OPERATION_IN_PROGRESS", "VDI", vdi_ref, other, task)


# -- VDI ---------------------------------------------------------------------------------------
@message("VDI.create")
def vdi_create(ctx, record: dict) -> str:
    sr_ref = record.get("SR", NULL_REF)
    db = ctx.db
    sr = db.get("SR", sr_ref)
    backend = backend_of(ctx.pool, sr_ref, ctx.world)
    if not isinstance(backend, FileSR):
        raise XapiError("SR_OPERATION_NOT_SUPPORTED", sr_ref)
    if sr["content_type"] == "iso":
        raise XapiError("SR_OPERATION_NOT_SUPPORTED", sr_ref)
    size = int(record.get("virtual_size", 0))
    if size < 0:
        raise XapiError("INVALID_VALUE", "virtual_size", str(size))
    with backend_errors():
        disk = backend.create(size)
    sm_config = dict(record.get("sm_config") or {})
    sm_config.update(disk.sm_config)
    ref = record_disk(
        db,
        sr_ref,
        disk,
        name_label=record.get("name_label", ""),
        name_description=record.get("name_description", ""),
        type=record.get("type", "user") or "user",
        sharable=bool(record.get("sharable", False)),
        read_only=bool(record.get("read_only", False)),
        other_config=dict(record.get("other_config") or {}),
        xenstore_data=dict(record.get("xenstore_data") or {}),
        sm_config=sm_config,
        tags=list(record.get("tags") or []),
    )
    refresh_sr(ctx.pool, sr_ref, ctx.world)
    return ref


@message("VDI.destroy")
def vdi_destroy(ctx, vdi_ref: str) -> None:
    db = ctx.db
    backend, vdi = vdi_backend(ctx.pool, vdi_ref, ctx.world)
    check_vdi_op(db, vdi_ref, "destroy")
    if isinstance(backend, FileSR):
        with backend_errors():
            backend.destroy(vdi["location"])
    elif isinstance(backend, LunSR | IsoSR):
        raise XapiError("SR_OPERATION_NOT_SUPPORTED", vdi["SR"])
    with db.lock:
        for vbd in list(vdi["VBDs"]):
            db.destroy("VBD", vbd)
        for snap in list(vdi["snapshots"]):
            db.set("VDI", snap, "snapshot_of", NULL_REF)
        db.destroy("VDI", vdi_ref)
    refresh_sr(ctx.pool, vdi["SR"], ctx.world)


def snapshot_vdi(ctx, vdi_ref: str, *, is_snapshot: bool, extra: dict | None = None) -> str:
    """VDI.snapshot / VDI.clone on a file SR; returns the new VDI's ref."""
    db = ctx.db
    backend, vdi = _file_backend(ctx, vdi_ref, "snapshot" if is_snapshot else "clone")
    if vdi["current_operations"]:
        check_vdi_op(db, vdi_ref, "snapshot")
    with backend_errors():
        base, leaf, new = backend.snapshot(vdi["location"])
    sr_ref = vdi["SR"]
    with db.lock:
        record_disk(db, sr_ref, base, name_label="base copy", name_description="", read_only=True)
        record_disk(db, sr_ref, leaf)
        fields = {
            "name_label": vdi["name_label"],
            "name_description": vdi["name_description"],
            "type": vdi["type"],
            "sharable": vdi["sharable"],
            "read_only": False,
            "other_config": dict(vdi["other_config"]),
            "xenstore_data": dict(vdi["xenstore_data"]),
            "is_a_snapshot": is_snapshot,
            "snapshot_of": vdi_ref if is_snapshot else NULL_REF,
            "snapshot_time": now() if is_snapshot else XDate("19700101T00:00:00Z"),
            "tags": list(vdi["tags"]),
        }
        fields.update(extra or {})
        new_ref = record_disk(db, sr_ref, new, **fields)
    refresh_sr(ctx.pool, sr_ref, ctx.world)
    return new_ref


@message("VDI.snapshot")
def vdi_snapshot(ctx, vdi_ref: str, driver_params: dict) -> str:
    return snapshot_vdi(ctx, vdi_ref, is_snapshot=True)


@message("VDI.clone")
def vdi_clone(ctx, vdi_ref: str, driver_params: dict) -> str:
    return snapshot_vdi(ctx, vdi_ref, is_snapshot=False)


@message("VDI.resize")
def vdi_resize(ctx, vdi_ref: str, size: int) -> None:
    backend, vdi = _file_backend(ctx, vdi_ref, "resize")
    check_vdi_op(ctx.db, vdi_ref, "resize")
    with backend_errors():
        disk = backend.resize(vdi["location"], int(size))
    record_disk(ctx.db, vdi["SR"], disk)
    refresh_sr(ctx.pool, vdi["SR"], ctx.world)


@message("VDI.resize_online")
def vdi_resize_online(ctx, vdi_ref: str, size: int) -> None:
    backend, vdi = _file_backend(ctx, vdi_ref, "resize_online")
    with backend_errors():
        disk = backend.resize(vdi["location"], int(size))
    record_disk(ctx.db, vdi["SR"], disk)
    refresh_sr(ctx.pool, vdi["SR"], ctx.world)


def copy_vdi(
    src_pool,
    vdi_ref: str,
    dst_pool,
    sr_ref: str,
    *,
    base_ref=NULL_REF,
    into_ref=NULL_REF,
    world=None,
    base_location: str | None = None,
):
    """Copy a VDI's content to an SR of (possibly) another pool; returns the new/target VDI ref.

    ``base_ref`` (or the chain member ``base_location``) limits the copy to the blocks above it.
    """
    src_backend, vdi = vdi_backend(src_pool, vdi_ref, world)
    dst_backend = backend_of(dst_pool, sr_ref, world)
    if not isinstance(dst_backend, FileSR):
        raise XapiError("SR_OPERATION_NOT_SUPPORTED", sr_ref)
    db = dst_pool.db
    with backend_errors():
        if isinstance(src_backend, FileSR):
            base_loc = base_location
            if not is_null(base_ref):
                base_loc = src_pool.db.get("VDI", base_ref)["location"]
            into_loc = None if is_null(into_ref) else db.get("VDI", into_ref)["location"]
            disk = src_backend.copy_to(vdi["location"], dst_backend, base_uuid=base_loc, into_uuid=into_loc)
        else:
            disk = _copy_raw_file(Path(src_backend.path_of(vdi["location"])), dst_backend, vdi)
    if not is_null(into_ref):
        record_disk(db, sr_ref, disk)
        refresh_sr(dst_pool, sr_ref, world)
        return into_ref
    new_ref = record_disk(
        db,
        sr_ref,
        disk,
        name_label=vdi["name_label"],
        name_description=vdi["name_description"],
        type=vdi["type"] if vdi["type"] != "suspend" else "suspend",
        sharable=vdi["sharable"],
        read_only=False,
        other_config=dict(vdi["other_config"]),
        xenstore_data=dict(vdi["xenstore_data"]),
        tags=list(vdi["tags"]),
    )
    refresh_sr(dst_pool, sr_ref, world)
    return new_ref


def _copy_raw_file(src: Path, dest: FileSR, vdi: dict) -> DiskInfo:
    from xenapi_driver import vhd

    disk = dest.create(int(vdi["virtual_size"]))
    with open(src, "rb") as handle:
        vhd.import_raw(handle, str(dest.path_of(disk.uuid)))
    return dest.info(disk.uuid)


@message("VDI.copy")
def vdi_copy(ctx, vdi_ref: str, sr_ref: str, base_vdi: str = NULL_REF, into_vdi: str = NULL_REF) -> str:
    ctx.db.get("VDI", vdi_ref)
    if is_null(sr_ref) and not is_null(into_vdi):
        sr_ref = ctx.db.get("VDI", into_vdi)["SR"]
    ctx.db.get("SR", sr_ref)
    return copy_vdi(
        ctx.pool, vdi_ref, ctx.pool, sr_ref, base_ref=base_vdi, into_ref=into_vdi, world=ctx.world
    )


@message("VDI.introduce")
def vdi_introduce(
    ctx,
    uuid,
    name_label,
    name_description,
    sr_ref,
    vdi_type,
    sharable,
    read_only,
    other_config,
    location,
    xenstore_data,
    sm_config,
    managed=True,
    virtual_size=0,
    physical_utilisation=0,
    metadata_of_pool=NULL_REF,
    is_a_snapshot=False,
    snapshot_time=None,
    snapshot_of=NULL_REF,
) -> str:
    db = ctx.db
    db.get("SR", sr_ref)
    backend = backend_of(ctx.pool, sr_ref, ctx.world)
    with backend_errors():
        found = backend.scan() if not isinstance(backend, FileSR) else backend._all()
    if location not in found:
        raise XapiError("SR_BACKEND_FAILURE_46", "", f"The VDI is not available [opterr={location}]", "")
    existing = _find_by_location(db, sr_ref, location)
    if existing:
        return existing
    disk = found[location]
    if uuid:
        disk.uuid = uuid
    return record_disk(
        db,
        sr_ref,
        disk,
        name_label=name_label,
        name_description=name_description,
        type=vdi_type or "user",
        sharable=bool(sharable),
        read_only=bool(read_only) or disk.read_only,
        other_config=dict(other_config or {}),
        xenstore_data=dict(xenstore_data or {}),
        sm_config={**dict(sm_config or {}), **disk.sm_config},
        is_a_snapshot=bool(is_a_snapshot),
        snapshot_of=snapshot_of or NULL_REF,
    )


@message("VDI.forget")
def vdi_forget(ctx, vdi_ref: str) -> None:
    db = ctx.db
    vdi = db.get("VDI", vdi_ref)
    with db.lock:
        for vbd in list(vdi["VBDs"]):
            if db.get("VBD", vbd)["currently_attached"]:
                raise XapiError("VDI_IN_USE", vdi_ref, "forget")
        for vbd in list(vdi["VBDs"]):
            db.destroy("VBD", vbd)
        db.destroy("VDI", vdi_ref)


# -- SR and PBD --------------------------------------------------------------------------------
def _sr_content_type(sr_type: str, content_type: str) -> str:
    return content_type or ("iso" if sr_type in ISO_SR_TYPES else "user")


@message("SR.create")
def sr_create(
    ctx,
    host,
    device_config,
    physical_size,
    name_label,
    name_description,
    sr_type,
    content_type,
    shared,
    sm_config,
) -> str:
    db = ctx.db
    db.get("host", host)
    sr_type = str(sr_type)
    if sr_type not in FILE_SR_TYPES | ISO_SR_TYPES | LUN_SR_TYPES:
        raise XapiError("SR_UNKNOWN_DRIVER", sr_type)
    if sr_type in LUN_SR_TYPES:
        with backend_errors():
            LunSR(
                iscsi_root(ctx.world),
                dict(device_config).get("targetIQN", ""),
                dict(device_config).get("SCSIid"),
            ).check_attachable()
    sr_uuid = str(uuidlib.uuid4())
    hosts = [h.ref for h in ctx.pool.hosts] if shared else [host]
    if shared and sr_type in FILE_SR_TYPES:
        _make_shared_dir(ctx.pool, sr_uuid)
    elif sr_type in FILE_SR_TYPES:
        sim_host(ctx.pool, host).sr_path(sr_uuid).mkdir(parents=True)
    with db.lock:
        size = int(physical_size) or (DEFAULT_SR_SIZE if sr_type in FILE_SR_TYPES else 0)
        sr_ref = _new_sr(
            db,
            sr_uuid,
            name_label,
            name_description,
            sr_type,
            content_type,
            shared,
            sm_config,
            physical_size=size,
        )
        for h in hosts:
            db.create(
                "PBD", host=h, SR=sr_ref, device_config=dict(device_config or {}), currently_attached=True
            )
    scan(ctx.pool, sr_ref, ctx.world)
    return sr_ref


def _sr_ops() -> list[str]:
    return [
        "scan",
        "destroy",
        "forget",
        "plug",
        "unplug",
        "update",
        "vdi_create",
        "vdi_introduce",
        "vdi_destroy",
        "vdi_resize",
        "vdi_clone",
        "vdi_snapshot",
        "pbd_create",
        "pbd_destroy",
    ]


def _make_shared_dir(pool, sr_uuid: str) -> Path:
    """A shared SR lives once per pool; each host's sandbox sees it at var/run/sr-mount/<uuid>."""
    return pool.shared_sr_dir(sr_uuid)


@message("SR.introduce")
def sr_introduce(ctx, uuid, name_label, name_description, sr_type, content_type, shared, sm_config) -> str:
    db = ctx.db
    try:
        existing = db.by_uuid("SR", uuid)
    except XapiError:
        existing = None
    if existing:
        raise XapiError("SR_UUID_EXISTS", uuid)
    uuid = uuid or str(uuidlib.uuid4())
    return _new_sr(db, uuid, name_label, name_description, sr_type, content_type, shared, sm_config)


def _new_sr(db, uuid, name_label, name_description, sr_type, content_type, shared, sm_config, **extra) -> str:
    """The SR record ``SR.create`` and ``SR.introduce`` both make."""
    fields = dict(
        uuid=uuid,
        name_label=name_label,
        name_description=name_description,
        type=sr_type,
        content_type=_sr_content_type(sr_type, content_type),
        shared=bool(shared),
        sm_config=dict(sm_config or {}),
        allowed_operations=_sr_ops(),
    )
    return _create_with_uuid(db, "SR", {**fields, **extra})


def _errors() -> dict:
    from xenapi_driver.simulator import schema

    return schema.load().errors


@message("SR.forget")
def sr_forget(ctx, sr_ref: str) -> None:
    db = ctx.db
    with db.lock:
        sr = db.get("SR", sr_ref)
        for pbd in sr["PBDs"]:
            if db.get("PBD", pbd)["currently_attached"]:
                raise XapiError("SR_HAS_PBD", sr_ref)
        for vdi in list(sr["VDIs"]):
            for vbd in list(db.get("VDI", vdi)["VBDs"]):
                db.update("VBD", vbd, VDI=NULL_REF, empty=True)
            db.destroy("VDI", vdi)
        for pbd in list(sr["PBDs"]):
            db.destroy("PBD", pbd)
        db.destroy("SR", sr_ref)


@message("SR.destroy")
def sr_destroy(ctx, sr_ref: str) -> None:
    db = ctx.db
    sr = db.get("SR", sr_ref)
    for vdi in sr["VDIs"]:
        if any(db.get("VBD", v)["currently_attached"] for v in db.get("VDI", vdi)["VBDs"]):
            raise XapiError("SR_HAS_PBD", sr_ref)  # XAPI refuses while disks are in use
    path = None
    if sr["type"] in FILE_SR_TYPES and sr["PBDs"]:
        path = sr_dir(ctx.pool, sr_ref)
    with db.lock:
        for pbd in sr["PBDs"]:
            db.set("PBD", pbd, "currently_attached", False)
        sr_forget(ctx, sr_ref)
    if path is not None:
        real = path.resolve()
        for f in real.glob("*.vhd"):
            f.unlink()
        for host in ctx.pool.hosts:
            link = host.sr_path(sr["uuid"])
            if link.is_symlink():
                link.unlink()
        try:
            real.rmdir()
        except OSError:
            pass


@message("SR.scan")
def sr_scan(ctx, sr_ref: str) -> None:
    sr = ctx.db.get("SR", sr_ref)
    if not any(ctx.db.get("PBD", p)["currently_attached"] for p in sr["PBDs"]):
        raise XapiError("SR_HAS_NO_PBDS", sr_ref)
    scan(ctx.pool, sr_ref, ctx.world)


@message("SR.update")
def sr_update(ctx, sr_ref: str) -> None:
    refresh_sr(ctx.pool, sr_ref, ctx.world)


@message("SR.get_supported_types")
def sr_get_supported_types(ctx) -> list[str]:
    return sorted(FILE_SR_TYPES | ISO_SR_TYPES | LUN_SR_TYPES)


@message("PBD.create")
def pbd_create(ctx, record: dict) -> str:
    db = ctx.db
    db.get("host", record.get("host", NULL_REF))
    db.get("SR", record.get("SR", NULL_REF))
    return db.create(
        "PBD",
        host=record["host"],
        SR=record["SR"],
        device_config=dict(record.get("device_config") or {}),
        other_config=dict(record.get("other_config") or {}),
        currently_attached=False,
    )


@message("PBD.plug")
def pbd_plug(ctx, pbd_ref: str) -> None:
    db = ctx.db
    pbd = db.get("PBD", pbd_ref)
    if pbd["currently_attached"]:
        return
    sr = db.get("SR", pbd["SR"])
    device_config = dict(pbd["device_config"])
    if sr["type"] in LUN_SR_TYPES:
        for key in ("target", "targetIQN"):
            if not device_config.get(key):
                raise XapiError(
                    "SR_BACKEND_FAILURE_96" if key == "target" else "SR_BACKEND_FAILURE_97",
                    "",
                    f"The request is missing or has an incorrect {key} parameter",
                    "",
                )
        with backend_errors():
            LunSR(
                iscsi_root(ctx.world), device_config["targetIQN"], device_config.get("SCSIid")
            ).check_attachable()
    elif sr["type"] in FILE_SR_TYPES:
        path = sim_host(ctx.pool, pbd["host"]).sr_path(sr["uuid"])
        if not path.exists():
            if sr["shared"]:
                _make_shared_dir(ctx.pool, sr["uuid"])
            else:
                path.mkdir(parents=True)
    elif sr["type"] in ISO_SR_TYPES:
        location = device_config.get("location")
        if location and not Path(location).is_dir():
            raise XapiError(
                "SR_BACKEND_FAILURE_222", "", f"Could not mount the directory specified [{location}]", ""
            )
    db.set("PBD", pbd_ref, "currently_attached", True)
    if sr["type"] in LUN_SR_TYPES | ISO_SR_TYPES and not sr["physical_size"]:
        refresh_sr(ctx.pool, pbd["SR"], ctx.world)


@message("PBD.unplug")
def pbd_unplug(ctx, pbd_ref: str) -> None:
    db = ctx.db
    pbd = db.get("PBD", pbd_ref)
    sr = db.get("SR", pbd["SR"])
    for vdi in sr["VDIs"]:
        for vbd in db.get("VDI", vdi)["VBDs"]:
            rec = db.get("VBD", vbd)
            if rec["currently_attached"] and db.get("VM", rec["VM"])["resident_on"] == pbd["host"]:
                raise XapiError("VDI_IN_USE", vdi, "unplug")
    db.set("PBD", pbd_ref, "currently_attached", False)


@message("PBD.destroy")
def pbd_destroy(ctx, pbd_ref: str) -> None:
    db = ctx.db
    if db.get("PBD", pbd_ref)["currently_attached"]:
        raise XapiError("OPERATION_NOT_ALLOWED", "PBD is currently attached")
    db.destroy("PBD", pbd_ref)


# -- VBD ---------------------------------------------------------------------------------------
VBD_RUNNING_STATES = devices.RUNNING_STATES


def vbd_allowed_operations(db, vbd_ref: str) -> list[str]:
    vbd = db.get("VBD", vbd_ref)
    vm = db.get("VM", vbd["VM"])
    ops = []
    running = vm["power_state"] in VBD_RUNNING_STATES
    if running:
        ops.append("unplug" if vbd["currently_attached"] else "plug")
        if vbd["currently_attached"]:
            ops.append("unplug_force")
    else:
        ops.append("attach")
    if vbd["type"] == "CD":
        ops.append("insert" if vbd["empty"] else "eject")
    return sorted(ops)


def refresh_vbd(db, vbd_ref: str) -> None:
    db.set("VBD", vbd_ref, "allowed_operations", vbd_allowed_operations(db, vbd_ref))
    _refresh_vdi_if_any(db, db.get("VBD", vbd_ref)["VDI"])


def _refresh_vdi_if_any(db, vdi_ref: str) -> None:
    """A VBD's VDI may be NULL or already gone; otherwise its allowed operations follow the VBD."""
    if not is_null(vdi_ref):
        try:
            refresh_vdi(db, vdi_ref)
        except XapiError:
            pass


@message("VBD.create")
def vbd_create(ctx, record: dict) -> str:
    db = ctx.db
    vm_ref = record.get("VM", NULL_REF)
    vm = db.get("VM", vm_ref)
    vdi_ref = record.get("VDI", NULL_REF) or NULL_REF
    vbd_type = record.get("type", "Disk") or "Disk"
    empty = bool(record.get("empty", False))
    mode = record.get("mode", "RW") or "RW"
    if vbd_type == "CD" and mode == "RW":
        raise XapiError("VBD_CDS_MUST_BE_READONLY")
    if is_null(vdi_ref):
        if vbd_type != "CD":
            raise XapiError("HANDLE_INVALID", "VDI", vdi_ref)
        empty = True
    else:
        vdi = db.get("VDI", vdi_ref)
        empty = False
        if vdi["read_only"] and mode == "RW" and vbd_type != "CD":
            raise XapiError("VDI_READONLY", vdi_ref)
        if not vdi["sharable"] and mode == "RW":
            for other in vdi["VBDs"]:
                o = db.get("VBD", other)
                if o["currently_attached"] and o["mode"] == "RW" and o["VM"] != vm_ref:
                    raise XapiError("VDI_IN_USE", vdi_ref, "attach")
    userdevice = str(record.get("userdevice", "autodetect") or "autodetect")
    used = {db.get("VBD", v)["userdevice"] for v in vm["VBDs"]}
    if userdevice == "autodetect":
        n = 0
        while str(n) in used:
            n += 1
        userdevice = str(n)
    elif userdevice in used:
        raise XapiError("DEVICE_ALREADY_EXISTS", userdevice)
    with db.lock:
        ref = db.create(
            "VBD",
            VM=vm_ref,
            VDI=vdi_ref,
            userdevice=userdevice,
            bootable=bool(record.get("bootable", False)),
            mode=mode,
            type=vbd_type,
            unpluggable=bool(record.get("unpluggable", True)),
            empty=empty if vbd_type == "CD" else False,
            other_config=dict(record.get("other_config") or {}),
            qos_algorithm_type=record.get("qos_algorithm_type", "") or "",
            qos_algorithm_params=dict(record.get("qos_algorithm_params") or {}),
            currently_attached=False,
            device="",
        )
        refresh_vbd(db, ref)
    return ref


def _vbd_device(userdevice: str, vm: dict) -> str:
    try:
        index = int(userdevice)
    except ValueError:
        return userdevice
    prefix = "hd" if vm.get("HVM_boot_policy") else "xvd"
    return prefix + chr(ord("a") + index) if index < 26 else f"{prefix}{index}"


def attach_vbd(db, vbd_ref: str) -> None:
    """Mark a VBD attached (VM start / hot plug), with XAPI's sharing checks."""
    vbd = db.get("VBD", vbd_ref)
    vm = db.get("VM", vbd["VM"])
    if not is_null(vbd["VDI"]) and not vbd["empty"]:
        vdi = db.get("VDI", vbd["VDI"])
        if not vdi["sharable"] and vbd["mode"] == "RW":
            for other in vdi["VBDs"]:
                o = db.get("VBD", other)
                if other != vbd_ref and o["currently_attached"] and o["mode"] == "RW":
                    raise XapiError("VDI_IN_USE", vbd["VDI"], "attach")
    db.update("VBD", vbd_ref, currently_attached=True, device=_vbd_device(vbd["userdevice"], vm))
    refresh_vbd(db, vbd_ref)


def detach_vbd(db, vbd_ref: str) -> None:
    db.update("VBD", vbd_ref, currently_attached=False)
    refresh_vbd(db, vbd_ref)


@message("VBD.plug")
def vbd_plug(ctx, vbd_ref: str) -> None:
    db = ctx.db
    with db.lock:
        devices.checked(db, "VBD", vbd_ref, attached=False)
        attach_vbd(db, vbd_ref)


@message("VBD.unplug")
def vbd_unplug(ctx, vbd_ref: str) -> None:
    db = ctx.db
    with db.lock:
        vbd = devices.checked(db, "VBD", vbd_ref, attached=True)
        if not vbd["unpluggable"]:
            raise XapiError("VBD_NOT_UNPLUGGABLE", vbd_ref)
        detach_vbd(db, vbd_ref)


@message("VBD.unplug_force")
def vbd_unplug_force(ctx, vbd_ref: str) -> None:
    db = ctx.db
    with db.lock:
        devices.checked(db, "VBD", vbd_ref, attached=True, running=False)
        detach_vbd(db, vbd_ref)


@message("VBD.destroy")
def vbd_destroy(ctx, vbd_ref: str) -> None:
    db = ctx.db
    with db.lock:
        vbd = devices.destroyable(db, "VBD", vbd_ref)
        db.destroy("VBD", vbd_ref)
        _refresh_vdi_if_any(db, vbd["VDI"])


@message("VBD.insert")
def vbd_insert(ctx, vbd_ref: str, vdi_ref: str) -> None:
    db = ctx.db
    with db.lock:
        vbd = db.get("VBD", vbd_ref)
        db.get("VDI", vdi_ref)
        if vbd["type"] != "CD":
            raise XapiError("VBD_NOT_REMOVABLE_MEDIA", vbd_ref)
        if not vbd["empty"]:
            raise XapiError("VBD_NOT_EMPTY", vbd_ref)
        db.update("VBD", vbd_ref, VDI=vdi_ref, empty=False)
        refresh_vbd(db, vbd_ref)


@message("VBD.eject")
def vbd_eject(ctx, vbd_ref: str) -> None:
    db = ctx.db
    with db.lock:
        vbd = db.get("VBD", vbd_ref)
        if vbd["type"] != "CD":
            raise XapiError("VBD_NOT_REMOVABLE_MEDIA", vbd_ref)
        if vbd["empty"]:
            raise XapiError("VBD_IS_EMPTY", vbd_ref)
        old = vbd["VDI"]
        db.update("VBD", vbd_ref, VDI=NULL_REF, empty=True)
        refresh_vbd(db, vbd_ref)
        if not is_null(old):
            refresh_vdi(db, old)


@message("VBD.assert_attachable")
def vbd_assert_attachable(ctx, vbd_ref: str) -> None:
    db = ctx.db
    vbd = db.get("VBD", vbd_ref)
    if not is_null(vbd["VDI"]):
        vdi = db.get("VDI", vbd["VDI"])
        if not vdi["sharable"] and vbd["mode"] == "RW":
            for other in vdi["VBDs"]:
                o = db.get("VBD", other)
                if other != vbd_ref and o["currently_attached"] and o["mode"] == "RW":
                    raise XapiError("VDI_IN_USE", vbd["VDI"], "attach")


@message("VDI.update")
def vdi_update(ctx, vdi_ref: str) -> None:
    """Re-read one VDI's sizes and chain from its SR."""
    backend, vdi = vdi_backend(ctx.pool, vdi_ref, ctx.world)
    with backend_errors():
        if isinstance(backend, FileSR):
            disk = backend.info(vdi["location"])
        else:
            found = backend.scan()
            if vdi["location"] not in found:
                raise XapiError("VDI_MISSING", vdi["SR"], vdi_ref)
            disk = found[vdi["location"]]
            disk.uuid = vdi["uuid"]
    record_disk(ctx.db, vdi["SR"], disk)


@message("SR.probe")
def sr_probe(ctx, host, device_config, sr_type, sm_config) -> str:
    """What an SR type finds at ``device_config``: for iSCSI the target's LUNs, as SM's XML."""
    ctx.db.get("host", host)
    config = dict(device_config or {})
    if sr_type in LUN_SR_TYPES:
        if not config.get("target"):
            raise XapiError(
                "SR_BACKEND_FAILURE_96", "", "The request is missing or has an incorrect target", ""
            )
        if not config.get("targetIQN"):
            raise XapiError(
                "SR_BACKEND_FAILURE_97",
                "",
                "The request is missing or has an incorrect target IQN parameter",
                "",
            )
        backend = LunSR(iscsi_root(ctx.world), config["targetIQN"])
        with backend_errors():
            backend.check_attachable()
        luns = []
        for lun, path in sorted(backend.luns().items()):
            luns.append(
                "<LUN><vendor>SIMULATED</vendor><serial></serial>"
                f"<LUNid>{lun}</LUNid><size>{path.stat().st_size}</size>"
                f"<SCSIid>{lun_scsi_id(config['targetIQN'], lun)}</SCSIid></LUN>"
            )
        return '<?xml version="1.0" ?>\n<iscsi-target>' + "".join(luns) + "</iscsi-target>"
    if sr_type in FILE_SR_TYPES:
        return '<?xml version="1.0" ?>\n<SRlist></SRlist>'
    raise XapiError("SR_UNKNOWN_DRIVER", sr_type)
