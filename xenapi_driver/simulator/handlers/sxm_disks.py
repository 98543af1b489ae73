"""Storage XenMotion's disk copies: snapshot chains are rebuilt at the destination, not flattened.

XAPI's storage migration copies a VM's snapshot disks oldest first and every later disk of the
family as a clone of the previous copy at the destination plus only the blocks that differ
(``VDI.copy`` with a base), so a disk with n snapshots arrives as one chain sharing its base
copies, as at the source, instead of n+1 full copies.  A disk that cannot be chained that way
(another target SR, a LUN, a snapshot written to after it was taken) is copied in full.
A volume the destination already sees (the same LUN) is not copied at all.
"""

from __future__ import annotations

from collections.abc import Callable

from xenapi_driver.simulator.context import CallContext
from xenapi_driver.simulator.errors import XapiError
from xenapi_driver.simulator.handlers import storage

CLONED_FIELDS = (
    "name_label",
    "name_description",
    "type",
    "sharable",
    "other_config",
    "xenstore_data",
    "tags",
)


def copy_order(db, targets: dict[str, str]) -> list[tuple[str, str | None]]:
    """``(vdi, previous)`` pairs: each family's snapshots oldest first, then the disk they snapshot."""
    snaps: dict[str, list[str]] = {}
    for vdi in targets:
        rec = db.get("VDI", vdi)
        if rec["is_a_snapshot"] and rec["snapshot_of"] in targets:
            snaps.setdefault(rec["snapshot_of"], []).append(vdi)
    order: list[tuple[str, str | None]] = []
    for vdi in targets:
        rec = db.get("VDI", vdi)
        if rec["is_a_snapshot"] and rec["snapshot_of"] in targets:
            continue  # copied with its family
        family = sorted(snaps.get(vdi, []), key=lambda v: str(db.get("VDI", v)["snapshot_time"]))
        previous = None
        for member in [*family, vdi]:
            order.append((member, previous))
            previous = member
    return order


def copy_disks(
    ctx,
    dest_pool,
    targets: dict[str, str],
    new_vdis: dict[str, str],
    shared: set[str],
    progress: Callable[[float], None] = lambda fraction: None,
) -> None:
    """Copy every VDI of ``targets`` (VDI -> destination SR) into ``dest_pool``.

    Fills ``new_vdis`` (source -> destination VDI) as it goes, so a caller can clean up after a
    failure; ``shared`` gets the destination VDIs that were already there (same LUN).
    """
    order = copy_order(ctx.db, targets)
    for n, (vdi, previous) in enumerate(order, 1):
        sr = targets[vdi]
        lun = same_lun(ctx, vdi, dest_pool, sr)
        if lun is not None:
            new_vdis[vdi] = lun
            shared.add(lun)
        else:
            base = _delta_base(ctx, vdi, previous, targets, new_vdis, shared, dest_pool)
            if base is None:
                new_vdis[vdi] = storage.copy_vdi(ctx.pool, vdi, dest_pool, sr, world=ctx.world)
            else:
                clone = _clone_at(ctx, dest_pool, new_vdis[previous], vdi)
                new_vdis[vdi] = clone
                storage.copy_vdi(
                    ctx.pool, vdi, dest_pool, sr, into_ref=clone, base_location=base, world=ctx.world
                )
        progress(n / len(order))
    _mark_snapshots(ctx.db, dest_pool.db, new_vdis, shared)


def same_lun(ctx, vdi_ref: str, dest_pool, sr_ref: str) -> str | None:
    """A volume the destination already sees (same LUN) is not copied: XAPI reuses its VDI."""
    db, ddb = ctx.db, dest_pool.db
    src_type = db.get("SR", db.get("VDI", vdi_ref)["SR"])["type"]
    if src_type not in storage.LUN_SR_TYPES or ddb.get("SR", sr_ref)["type"] not in storage.LUN_SR_TYPES:
        return None
    location = db.get("VDI", vdi_ref)["location"]
    for _ in range(2):
        for ref in ddb.get("SR", sr_ref)["VDIs"]:
            if ddb.get("VDI", ref)["location"] == location:
                return ref
        storage.scan(dest_pool, sr_ref, ctx.world)
    raise XapiError("VDI_MISSING", sr_ref, vdi_ref)


def _delta_base(ctx, vdi, previous, targets, new_vdis, shared, dest_pool) -> str | None:
    """The source chain member to copy ``vdi`` above, when its family's previous copy can be cloned."""
    if previous is None or previous not in new_vdis or new_vdis[previous] in shared:
        return None
    if targets[previous] != targets[vdi]:
        return None
    backend, rec = storage.vdi_backend(ctx.pool, vdi, ctx.world)
    prev_backend, prev = storage.vdi_backend(ctx.pool, previous, ctx.world)
    if not isinstance(backend, storage.FileSR) or prev_backend is not backend:
        return None
    if not isinstance(storage.backend_of(dest_pool, targets[vdi], ctx.world), storage.FileSR):
        return None
    with storage.backend_errors():
        return backend.delta_base(rec["location"], prev["location"])


def _clone_at(ctx, dest_pool, dest_vdi: str, like_vdi: str) -> str:
    """``VDI.clone`` of ``dest_vdi`` in the destination pool, described as ``like_vdi`` is."""
    rec = ctx.db.get("VDI", like_vdi)
    extra = {f: (rec[f].copy() if isinstance(rec[f], (dict, list)) else rec[f]) for f in CLONED_FIELDS}
    dctx = CallContext(world=ctx.world, pool=dest_pool, sim_host=dest_pool.master, method="VDI.clone")
    return storage.snapshot_vdi(dctx, dest_vdi, is_snapshot=False, extra=extra)


def _mark_snapshots(db, ddb, new_vdis: dict[str, str], shared: set[str]) -> None:
    """Copied snapshot disks are snapshots of the copied disks, taken when the originals were."""
    for old, new in new_vdis.items():
        if new in shared:
            continue
        rec = db.get("VDI", old)
        if rec["is_a_snapshot"] and rec["snapshot_of"] in new_vdis:
            ddb.update(
                "VDI",
                new,
                is_a_snapshot=True,
                snapshot_of=new_vdis[rec["snapshot_of"]],
                snapshot_time=rec["snapshot_time"],
            )
