"""Pool membership: ``pool.join``/``join_force``, ``pool.eject`` and ``pool.designate_new_master``.

Each simulated pool has its own database, so joining moves the joining host's records (host,
metrics, CPUs, PIFs, local SRs with their VDIs, its halted VMs and the control domain) into the
master's database under the same references, links the pool's shared SRs into the host's dom0
sandbox and gives it PBDs for them; the joiner's old one-host pool disappears.  Ejecting does the
reverse the way XAPI does: the host leaves with a fresh database and its local storage wiped.
"""

from __future__ import annotations

from typing import Any

from xenapi_driver.simulator import population, sessions
from xenapi_driver.simulator.errors import XapiError
from xenapi_driver.simulator.handlers import placement, storage, vm_power, vm_state, xenstore
from xenapi_driver.simulator.registry import message
from xenapi_driver.simulator.schema import NULL_REF
from xenapi_driver.simulator.world import SimPool, link_shared_sr


def _find_master(ctx, address: str):
    host = ctx.world.host_by_address(address)
    if host is None or not host.powered:
        raise XapiError("JOINING_HOST_CONNECTION_FAILED")
    return host


def _check_join(ctx, master_address: str, username: str, password: str):
    joiner_pool = ctx.pool
    db = ctx.db
    master = _find_master(ctx, master_address)
    target = master.pool
    if target is joiner_pool:
        raise XapiError("OPERATION_NOT_ALLOWED", "the host is already a member of this pool")
    if not master.is_master:
        raise XapiError("HOST_IS_SLAVE", master.master_address)
    if username != target.username or password != target.password:
        raise XapiError("SESSION_AUTHENTICATION_FAILED", username, "Authentication failure")
    if len(joiner_pool.hosts) > 1:
        raise XapiError("JOINING_HOST_CANNOT_BE_MASTER_OF_OTHER_HOSTS")
    with db.lock:
        for _ref, rec in db.items("VM"):
            if rec["is_control_domain"]:
                continue
            if rec["power_state"] in (vm_state.RUNNING, vm_state.PAUSED, vm_state.SUSPENDED):
                raise XapiError("JOINING_HOST_CANNOT_HAVE_RUNNING_OR_SUSPENDED_VMS")
            if rec["current_operations"]:
                raise XapiError("JOINING_HOST_CANNOT_HAVE_VMS_WITH_CURRENT_OPERATIONS")
        for ref, rec in db.items("SR"):
            if rec["shared"] and ref != joiner_pool.iso_sr and not rec["is_tools_sr"]:
                raise XapiError("JOINING_HOST_CANNOT_CONTAIN_SHARED_SRS")
    return target


def _objects_to_move(db, host_ref: str, joiner_pool) -> list[tuple[str, str]]:
    """Every (class, ref) that belongs to the joining host and survives the join."""
    moved: list[tuple[str, str]] = [("host", host_ref)]
    host = db.get("host", host_ref)
    if not storage.is_null(host["metrics"]):
        moved.append(("host_metrics", host["metrics"]))
    moved += [("host_cpu", r) for r in host["host_CPUs"]]
    for pif in host["PIFs"]:
        moved.append(("PIF", pif))
        metrics = db.get("PIF", pif)["metrics"]
        if not storage.is_null(metrics) and db.exists("PIF_metrics", metrics):
            moved.append(("PIF_metrics", metrics))
    local_srs = []
    for sr, rec in db.items("SR"):
        if not rec["shared"]:
            local_srs.append(sr)
            moved.append(("SR", sr))
            moved += [("PBD", p) for p in rec["PBDs"]]
            moved += [("VDI", v) for v in rec["VDIs"]]
    for vm, rec in db.items("VM"):
        if rec["is_a_template"] and rec["is_default_template"]:
            continue
        moved.append(("VM", vm))
        for field, cls in (("metrics", "VM_metrics"), ("guest_metrics", "VM_guest_metrics")):
            if not storage.is_null(rec[field]) and db.exists(cls, rec[field]):
                moved.append((cls, rec[field]))
        moved += [("VBD", v) for v in rec["VBDs"]]
        moved += [("VIF", v) for v in rec["VIFs"]]
        moved += [("console", c) for c in rec["consoles"]]
    return moved


def _move(src_db, dst_db, objects: list[tuple[str, str]], remap: dict[str, str]) -> None:
    """Copy records into ``dst_db`` under the same refs; refs to objects left behind become NULL
    (or their ``remap`` equivalent).  Relation sets are rebuilt by the destination database."""
    schema = dst_db.schema
    set_fields = {(one, set_field) for one, set_field, _many, _ref in schema.relations}
    keep = {ref for _cls, ref in objects}
    for cls, ref in objects:
        rec = src_db.record(cls, ref)
        info = schema.classes[cls]
        fields: dict[str, Any] = {}
        for name, value in rec.items():
            kind = info.fields[name].type
            if (cls, name) in set_fields:
                continue
            if kind.kind == "ref" and value != NULL_REF:
                value = remap.get(value, value if value in keep else NULL_REF)
            elif kind.kind == "set" and kind.elem is not None and kind.elem.kind == "ref":
                value = [remap.get(v, v) for v in value if v in keep or v in remap]
            fields[name] = value
        if cls == "VBD" and fields.get("VDI") == NULL_REF:
            fields["empty"] = True  # e.g. an ISO of the joiner's own library, which stays behind
        dst_db.create(cls, _ref=ref, **fields)


def _join(ctx, master_address: str, username: str, password: str) -> None:
    joiner_pool = ctx.pool
    host = ctx.sim_host
    target = _check_join(ctx, master_address, username, password)
    src, dst = joiner_pool.db, target.db
    with src.lock, dst.lock, joiner_pool.lock, target.lock:
        objects = _objects_to_move(src, host.ref, joiner_pool)
        remap = {}
        if joiner_pool.network and target.network:
            remap[joiner_pool.network] = target.network
        _move(src, dst, objects, remap)
        # The pool's shared SRs become visible to the new member.
        host.pool = target
        target.hosts.append(host)
        for sr, rec in list(dst.items("SR")):
            if rec["shared"] and not any(dst.get("PBD", p)["host"] == host.ref for p in rec["PBDs"]):
                config = dict(dst.get("PBD", rec["PBDs"][0])["device_config"]) if rec["PBDs"] else {}
                dst.create("PBD", host=host.ref, SR=sr, device_config=config, currently_attached=True)
        if target.shared_sr_root.exists():
            for sr_dir in sorted(target.shared_sr_root.iterdir()):
                link_shared_sr(host, sr_dir)
        placement.update_host_metrics(dst, host.ref)
        sessions.invalidate_all(joiner_pool)
        joiner_pool.hosts.remove(host)
        src.clear()
        if joiner_pool in ctx.world.pools:
            ctx.world.pools.remove(joiner_pool)


@message("pool.join")
def pool_join(ctx, master_address: str, master_username: str, master_password: str) -> None:
    _join(ctx, master_address, master_username, master_password)


@message("pool.join_force")
def pool_join_force(ctx, master_address: str, master_username: str, master_password: str) -> None:
    _join(ctx, master_address, master_username, master_password)


@message("pool.eject")
def pool_eject(ctx, host_ref: str) -> None:
    pool = ctx.pool
    db = ctx.db
    db.get("host", host_ref)
    host = ctx.host_obj(host_ref)
    if host is pool.master:
        raise XapiError("HOST_CANNOT_DESTROY_SELF", host_ref)
    with db.lock:
        for vm in db.get("host", host_ref)["resident_VMs"]:
            if not db.get("VM", vm)["is_control_domain"]:
                raise XapiError("HOST_HAS_RESIDENT_VMS", host_ref)
    with pool.lock, db.lock:
        _forget_host_records(ctx, host_ref)
        pool.hosts.remove(host)
        for link in (host.root / "var" / "run" / "sr-mount").iterdir():
            if link.is_symlink():
                link.unlink()
        local = host.sr_path(host.local_sr_uuid)
        if local.exists():
            for entry in local.glob("*.vhd"):
                entry.unlink()
    new_pool = SimPool(ctx.world, _next_index(ctx.world), pool.username, pool.password)
    with ctx.world._lock:
        ctx.world.pools.append(new_pool)
    population.populate_pool(new_pool)
    host.pool = new_pool
    new_pool.hosts.append(host)
    new_pool.master = host
    population.populate_host(new_pool, host)
    population.finish_pool(new_pool)
    xenstore.forget_host(host)


def _next_index(world) -> int:
    used = {p.index for p in world.pools}
    n = 0
    while n in used or (world.root / "pools" / f"pool{n}").exists():
        n += 1
    return n


def _forget_host_records(ctx, host_ref: str) -> None:
    """Remove an ejected host and everything only it could see (VMs on its local disks too)."""
    db = ctx.db
    host = db.get("host", host_ref)
    local_srs = [
        db.get("PBD", p)["SR"] for p in host["PBDs"] if not db.get("SR", db.get("PBD", p)["SR"])["shared"]
    ]
    doomed_vdis = {v for sr in local_srs for v in db.get("SR", sr)["VDIs"]}
    for vm, rec in list(db.items("VM")):
        if rec["is_control_domain"] and rec["resident_on"] == host_ref:
            vm_power.destroy_vm_records(db, vm)
        elif any(db.get("VBD", v)["VDI"] in doomed_vdis for v in rec["VBDs"]):
            vm_power.destroy_vm_records(db, vm)
    for sr in local_srs:
        for vdi in list(db.get("SR", sr)["VDIs"]):
            db.destroy("VDI", vdi)
        for pbd in list(db.get("SR", sr)["PBDs"]):
            db.destroy("PBD", pbd)
        db.destroy("SR", sr)
    for pbd in list(host["PBDs"]):
        db.destroy("PBD", pbd)
    for pif in list(host["PIFs"]):
        metrics = db.get("PIF", pif)["metrics"]
        db.destroy("PIF", pif)
        if not storage.is_null(metrics) and db.exists("PIF_metrics", metrics):
            db.destroy("PIF_metrics", metrics)
    for cpu in list(host["host_CPUs"]):
        db.destroy("host_cpu", cpu)
    metrics = host["metrics"]
    db.destroy("host", host_ref)
    if not storage.is_null(metrics) and db.exists("host_metrics", metrics):
        db.destroy("host_metrics", metrics)
    for vm, rec in list(db.items("VM")):
        if rec["affinity"] == host_ref:
            db.set("VM", vm, "affinity", NULL_REF)


@message("pool.designate_new_master")
def pool_designate_new_master(ctx, host_ref: str) -> None:
    pool = ctx.pool
    ctx.db.get("host", host_ref)
    host = ctx.host_obj(host_ref)
    if host is pool.master:
        return
    if not host.powered:
        raise XapiError("HOST_OFFLINE", host_ref)
    with pool.lock:
        pool.master = host
        for ref in ctx.db.all("pool"):
            ctx.db.set("pool", ref, "master", host_ref)
    # Both toolstacks restart: every session of the pool must log in again (at the new master).
    sessions.invalidate_all(pool)
