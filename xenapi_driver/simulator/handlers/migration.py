"""Live migration within a pool (``VM.pool_migrate``) and Storage XenMotion (``VM.migrate_send``).

Storage XenMotion really moves disks: every VDI is copied as a VHD into the SR named by
``vdi_map`` (on another pool's host when ``dest`` comes from another pool's
``host.migrate_receive``), snapshot chains rebuilt there rather than flattened (see
:mod:`.sxm_disks`), the source disks are destroyed (unless ``options['copy']``), and the
VM continues on the destination host with its UUID.  Snapshot VDIs follow their ``snapshot_of``;
VIFs (and snapshot VIFs) not in ``vif_map`` are matched by MAC; within a pool, VDIs already on
their target SR do not move.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from xenapi_driver.simulator import sessions
from xenapi_driver.simulator.errors import XapiError
from xenapi_driver.simulator.handlers import (
    domains,
    placement,
    storage,
    sxm_disks,
    vm_copy,
    vm_power,
    vm_state,
)
from xenapi_driver.simulator.handlers.vif import refresh_vif
from xenapi_driver.simulator.registry import message
from xenapi_driver.simulator.schema import NULL_REF

MIGRATION_ORIGINATOR = "xapi-storage-migration"


@message("host.migrate_receive")
def host_migrate_receive(ctx, host_ref: str, network_ref: str, options: dict) -> dict:
    """Prepare this pool to receive a VM: the map ``VM.migrate_send`` takes as ``dest``."""
    db = ctx.db
    db.get("host", host_ref)
    if not storage.is_null(network_ref):
        db.get("network", network_ref)
    host = ctx.host_obj(host_ref)
    if not host.powered:
        raise XapiError("HOST_OFFLINE", host_ref)
    pool = ctx.pool
    session = sessions.login(pool, pool.master, pool.username, pool.password, MIGRATION_ORIGINATOR)
    master_url = pool.master.url.rstrip("/")
    return {
        "SM": f"{host.url.rstrip('/')}/services/SM?session_id={session}",
        "host": host_ref,
        "xenops": f"{host.url.rstrip('/')}/services/xenops?session_id={session}",
        "session_id": session,
        "master": master_url,
    }


@dataclass
class Plan:
    """Everything migrate_send decided before touching anything."""

    dest_pool: object
    dest_host: str
    same_pool: bool
    vdi_targets: dict[str, str] = field(default_factory=dict)  # source VDI -> destination SR
    vif_targets: dict[str, str] = field(default_factory=dict)  # source VIF -> destination network
    snapshots: list[str] = field(default_factory=list)


def _dest_pool(ctx, dest: dict):
    for key in ("master", "xenops", "SM"):
        url = dest.get(key, "")
        if url:
            host = ctx.world.host_by_address(url.split("/services/")[0])
            if host is not None:
                return host.pool
    raise XapiError("VM_MIGRATE_FAILED", "", "", "", "the destination map names no simulated pool")


def _disks(db, vm_ref: str) -> list[str]:
    out = []
    for vbd in db.get("VM", vm_ref)["VBDs"]:
        rec = db.get("VBD", vbd)
        if rec["type"] == "CD" or rec["empty"] or storage.is_null(rec["VDI"]):
            continue
        out.append(rec["VDI"])
    return out


def plan_migration(ctx, vm_ref: str, dest: dict, vdi_map: dict, vif_map: dict) -> Plan:
    """XAPI's checks for Storage XenMotion, in its order; raises the first failure."""
    db = ctx.db
    rec = vm_state.check_operation(db, vm_ref, "migrate_send")
    dest_pool = _dest_pool(ctx, dest)
    sessions.validate(dest_pool, dest.get("session_id", ""))
    ddb = dest_pool.db
    dest_host = dest.get("host", NULL_REF)
    ddb.get("host", dest_host)
    same = dest_pool is ctx.pool
    plan = Plan(dest_pool, dest_host, same, snapshots=list(rec["snapshots"]))
    # Every disk of the VM must be mapped; snapshot disks follow the VDI they are snapshots of.
    for vdi in _disks(db, vm_ref):
        if vdi not in vdi_map:
            raise XapiError("VDI_NOT_IN_MAP", vdi)
        plan.vdi_targets[vdi] = vdi_map[vdi]
    for snap in plan.snapshots:
        for vdi in _disks(db, snap):
            target = vdi_map.get(vdi)
            origin = db.get("VDI", vdi)["snapshot_of"]
            if target is None and origin in plan.vdi_targets:
                target = plan.vdi_targets[origin]
            if target is None:
                raise XapiError("VDI_NOT_IN_MAP", vdi)
            plan.vdi_targets[vdi] = target
    suspend = rec["suspend_VDI"]
    if not storage.is_null(suspend) and db.exists("VDI", suspend):
        target = vdi_map.get(suspend)
        if target is None:
            pools = ddb.all("pool")
            target = ddb.get("pool", pools[0])["suspend_image_SR"] if pools else NULL_REF
            if storage.is_null(target) and plan.vdi_targets:
                target = next(iter(plan.vdi_targets.values()))
        plan.vdi_targets[suspend] = target
    for sr in plan.vdi_targets.values():
        ddb.get("SR", sr)
        if not placement.host_sees_sr(ddb, dest_host, sr):
            raise XapiError("VM_REQUIRES_SR", vm_ref, sr)
    if same:
        plan.vif_targets = {v: n for v, n in vif_map.items() if db.exists("VIF", v)}
    else:
        macs = {db.get("VIF", v)["MAC"]: n for v, n in vif_map.items() if db.exists("VIF", v)}
        for owner in [vm_ref, *plan.snapshots]:
            for vif in db.get("VM", owner)["VIFs"]:
                network = vif_map.get(vif) or macs.get(db.get("VIF", vif)["MAC"])
                if network is None:
                    raise XapiError("VIF_NOT_IN_MAP", vif)
                ddb.get("network", network)
                plan.vif_targets[vif] = network
    if rec["power_state"] in (vm_state.RUNNING, vm_state.PAUSED):
        needed = placement.vm_memory_need(rec)
        free = placement.host_free_memory(ddb, dest_host, exclude=vm_ref if same else None)
        if needed > free:
            raise XapiError("HOST_NOT_ENOUGH_FREE_MEMORY", str(needed), str(free))
        if not ddb.get("host", dest_host)["enabled"]:
            raise XapiError("HOST_DISABLED", dest_host)
    return plan


@message("VM.assert_can_migrate")
def vm_assert_can_migrate(
    ctx, vm_ref, dest, live, vdi_map, vif_map, options, vgpu_map=None, vdi_format_map=None
):
    plan_migration(ctx, vm_ref, dest, dict(vdi_map), dict(vif_map))


@message("VM.migrate_send")
def vm_migrate_send(
    ctx, vm_ref, dest, live, vdi_map, vif_map, options, vgpu_map=None, vdi_format_map=None
) -> str:
    copy = str((options or {}).get("copy", "false")).lower() == "true"
    with ctx.db.lock:
        plan = plan_migration(ctx, vm_ref, dest, dict(vdi_map), dict(vif_map))
    with vm_state.vm_operation(ctx, vm_ref, "migrate_send"):
        if plan.same_pool and not copy:
            return _migrate_within_pool(ctx, vm_ref, plan)
        return _migrate_across(ctx, vm_ref, plan, copy)


def _migrate_within_pool(ctx, vm_ref: str, plan: Plan) -> str:
    db = ctx.db
    moves = {v: sr for v, sr in plan.vdi_targets.items() if db.get("VDI", v)["SR"] != sr}
    new_vdis: dict[str, str] = {}
    try:
        sxm_disks.copy_disks(ctx, ctx.pool, moves, new_vdis, set(), lambda f: ctx.set_progress(0.8 * f))
    except BaseException:
        for new in new_vdis.values():
            if db.exists("VDI", new):
                _destroy_in(ctx.pool, new)
        raise
    for vdi, new in new_vdis.items():
        _repoint(db, vdi, new)
        storage.vdi_destroy(ctx, vdi)
    for vif, network in plan.vif_targets.items():
        db.set("VIF", vif, "network", network)
    rec = db.get("VM", vm_ref)
    if rec["power_state"] in (vm_state.RUNNING, vm_state.PAUSED):
        _relocate(ctx.pool, vm_ref, plan.dest_host)
    return vm_ref


def _repoint(db, old_vdi: str, new_vdi: str) -> None:
    """Make every VBD and the VM's suspend image use ``new_vdi`` instead of ``old_vdi``."""
    with db.lock:
        attached = []
        for vbd in list(db.get("VDI", old_vdi)["VBDs"]):
            if db.get("VBD", vbd)["currently_attached"]:
                attached.append(vbd)
                db.set("VBD", vbd, "currently_attached", False)
            db.set("VBD", vbd, "VDI", new_vdi)
        for vbd in attached:
            db.set("VBD", vbd, "currently_attached", True)
            storage.refresh_vbd(db, vbd)
        for vm in db.find("VM", suspend_VDI=old_vdi):
            db.set("VM", vm, "suspend_VDI", new_vdi)
        for snap in db.find("VDI", snapshot_of=old_vdi):
            db.set("VDI", snap, "snapshot_of", new_vdi)


def _relocate(pool, vm_ref: str, host_ref: str) -> None:
    db = pool.db
    state = db.get("VM", vm_ref)["power_state"]
    domains.stop_domain(pool, vm_ref, keep_devices=True)
    db.set("VM", vm_ref, "power_state", vm_state.HALTED)
    domains.boot_domain(pool, vm_ref, host_ref, paused=state == vm_state.PAUSED, new_metrics=False)


def _migrate_across(ctx, vm_ref: str, plan: Plan, copy: bool) -> str:
    db = ctx.db
    dest_pool = plan.dest_pool
    ddb = dest_pool.db
    rec = db.record("VM", vm_ref)
    new_vdis: dict[str, str] = {}
    shared: set[str] = set()
    try:
        sxm_disks.copy_disks(
            ctx, dest_pool, plan.vdi_targets, new_vdis, shared, lambda f: ctx.set_progress(0.8 * f)
        )
        new_vm = _copy_vm_record(ctx, vm_ref, ddb, plan, new_vdis, keep_uuid=not copy)
        for snap in plan.snapshots:
            new_snap = _copy_vm_record(ctx, snap, ddb, plan, new_vdis, keep_uuid=not copy)
            ddb.set("VM", new_snap, "snapshot_of", new_vm)
    except BaseException:
        for new in new_vdis.values():
            if new not in shared and ddb.exists("VDI", new):
                _destroy_in(dest_pool, new)
        raise
    state = rec["power_state"]
    if state in (vm_state.RUNNING, vm_state.PAUSED):
        started = _start_time(db, vm_ref)
        if not copy:
            domains.stop_domain(ctx.pool, vm_ref)
            db.set("VM", vm_ref, "power_state", vm_state.HALTED)
        domains.boot_domain(
            dest_pool, new_vm, plan.dest_host, paused=state == vm_state.PAUSED, new_metrics=copy
        )
        if not copy and started is not None:  # a migrated guest keeps its start time
            ddb.set("VM_metrics", ddb.get("VM", new_vm)["metrics"], "start_time", started)
    elif state == vm_state.SUSPENDED:
        ddb.update(
            "VM",
            new_vm,
            power_state=vm_state.SUSPENDED,
            suspend_VDI=new_vdis.get(rec["suspend_VDI"], NULL_REF),
        )
    if not copy:
        _destroy_source(ctx, vm_ref, plan)
    ctx.set_progress(1.0)
    return new_vm


def _start_time(db, vm_ref: str):
    metrics = db.get("VM", vm_ref)["metrics"]
    if storage.is_null(metrics) or not db.exists("VM_metrics", metrics):
        return None
    return db.get("VM_metrics", metrics)["start_time"]


def _copy_vm_record(ctx, vm_ref: str, ddb, plan: Plan, new_vdis: dict[str, str], *, keep_uuid: bool) -> str:
    db = ctx.db
    rec = db.record("VM", vm_ref)
    extra = {"is_a_snapshot": rec["is_a_snapshot"], "snapshot_time": rec["snapshot_time"]}
    if keep_uuid:
        extra["uuid"] = rec["uuid"]
    new_ref = vm_copy.duplicate_vm(
        ctx,
        vm_ref,
        rec["name_label"],
        disk_action=lambda vdi: new_vdis.get(vdi, NULL_REF),
        target_db=ddb,
        extra=extra,
    )
    for vif in rec["VIFs"] if ddb is not db else ():  # same pool: duplicate_vm copied the VIFs
        vif_rec = db.record("VIF", vif)
        ref = ddb.create(
            "VIF",
            VM=new_ref,
            device=vif_rec["device"],
            network=plan.vif_targets[vif],
            MAC=vif_rec["MAC"],
            MTU=vif_rec["MTU"],
            MAC_autogenerated=vif_rec["MAC_autogenerated"],
            other_config=dict(vif_rec["other_config"]),
            locking_mode=vif_rec["locking_mode"],
            qos_algorithm_type=vif_rec["qos_algorithm_type"],
            qos_algorithm_params=dict(vif_rec["qos_algorithm_params"]),
        )
        refresh_vif(ddb, ref)
    vm_state.refresh_vm(ddb, new_ref)
    return new_ref


def _destroy_in(pool, vdi_ref: str) -> None:
    backend, vdi = storage.vdi_backend(pool, vdi_ref)
    if isinstance(backend, storage.FileSR):
        backend.destroy(vdi["location"])
    pool.db.destroy("VDI", vdi_ref)


def _destroy_source(ctx, vm_ref: str, plan: Plan) -> None:
    db = ctx.db
    with db.lock:
        owners = [*plan.snapshots, vm_ref]
        for owner in owners:
            if db.exists("VM", owner):
                vm_power.destroy_vm_records(db, owner)
        for vdi in plan.vdi_targets:
            if db.exists("VDI", vdi):
                sr = db.get("VDI", vdi)["SR"]
                _destroy_in(ctx.pool, vdi)
                storage.refresh_sr(ctx.pool, sr, ctx.world)


@message("VM.pool_migrate")
def vm_pool_migrate(ctx, vm_ref: str, host_ref: str, options: dict) -> None:
    db = ctx.db
    db.get("host", host_ref)
    with vm_state.vm_operation(ctx, vm_ref, "pool_migrate"):
        rec = db.get("VM", vm_ref)
        if placement.host_offline(ctx, host_ref):
            raise XapiError("HOST_OFFLINE", host_ref)
        with db.lock:
            for sr in placement.vm_srs(db, vm_ref):
                if not placement.host_sees_sr(db, host_ref, sr):
                    raise XapiError("VM_REQUIRES_SR", vm_ref, sr)
            if host_ref != rec["resident_on"]:
                placement.assert_memory(db, vm_ref, host_ref)
            if not db.get("host", host_ref)["enabled"]:
                raise XapiError("HOST_DISABLED", host_ref)
        ctx.set_progress(0.5)
        _relocate(ctx.pool, vm_ref, host_ref)


@message("VDI.pool_migrate")
def vdi_pool_migrate(ctx, vdi_ref: str, sr_ref: str, options: dict) -> str:
    """Live-move one disk of a running VM to another SR of the pool; returns the new VDI."""
    db = ctx.db
    vdi = db.get("VDI", vdi_ref)
    db.get("SR", sr_ref)
    vms = {db.get("VBD", v)["VM"] for v in vdi["VBDs"]}
    for vm in vms:
        rec = db.get("VM", vm)
        if rec["power_state"] != vm_state.RUNNING:
            raise XapiError("VM_BAD_POWER_STATE", vm, "running", rec["power_state"].lower())
        host = rec["resident_on"]
        if not placement.host_sees_sr(db, host, sr_ref):
            raise XapiError("VM_REQUIRES_SR", vm, sr_ref)
    if vdi["SR"] == sr_ref:
        return vdi_ref
    new = storage.copy_vdi(ctx.pool, vdi_ref, ctx.pool, sr_ref, world=ctx.world)
    _repoint(db, vdi_ref, new)
    storage.vdi_destroy(ctx, vdi_ref)
    return new
