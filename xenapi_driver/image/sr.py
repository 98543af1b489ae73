"""SR-side helpers shared by the handlers, the cache and snapshots.

File SRs (EXT, NFS) keep each VDI as ``<sr_base_path>/<sr-uuid>/<vdi-uuid>.vhd``
and name parents in ``sm_config['vhd-parent']``; these helpers read chains
from XAPI's records in one call so no walk costs a call per level.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from xenapi_driver import conf as xconf
from xenapi_driver import exception as xexc

LOG = logging.getLogger(__name__)


def quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def sr_path(session: Any, sr_ref: str) -> str:
    """The SR's directory in dom0 (what the plug-ins take as ``sr_path``)."""
    sr_uuid = session.call_xenapi("SR.get_uuid", sr_ref)
    return f"{xconf.CONF.xenserver.sr_base_path.rstrip('/')}/{sr_uuid}"


def vdi_records(session: Any, sr_ref: str) -> dict[str, dict[str, Any]]:
    return session.get_all_records_where("VDI", f'field "SR" = "{quote(sr_ref)}"')


def chain_uuids(session: Any, sr_ref: str, vdi_ref: str) -> list[str]:
    """UUIDs of ``vdi_ref``'s VHD chain, leaf first (one XAPI call)."""
    records = vdi_records(session, sr_ref)
    by_uuid = {rec["uuid"]: rec for rec in records.values()}
    leaf = records.get(vdi_ref) or session.call_xenapi("VDI.get_record", vdi_ref)
    chain = [leaf["uuid"]]
    parent = (leaf.get("sm_config") or {}).get("vhd-parent")
    while parent:
        if parent in chain or len(chain) > 64:
            raise xexc.XenAPIError("VHD_CHAIN_INVALID", [f"chain of {leaf['uuid']} loops at {parent}"])
        chain.append(parent)
        rec = by_uuid.get(parent)
        parent = (rec.get("sm_config") or {}).get("vhd-parent") if rec else None
    return chain


def call_plugin_async(session: Any, plugin: str, fn: str, args: dict[str, str]) -> str:
    """``host.call_plugin`` on the managed host as a XAPI task.

    A plug-in moving an image runs for minutes; as a task, no pooled XML-RPC
    session is held busy meanwhile (``call_async`` polls the task instead).
    """
    args = {str(k): str(v) for k, v in args.items()}
    result = session.call_async("host.call_plugin", session.host_ref, plugin, fn, args)
    return "" if result is None else str(result)


def scan(session: Any, sr_ref: str) -> None:
    """``SR.scan``: introduces new files, forgets vanished ones and runs the storage GC."""
    session.call_xenapi("SR.scan", sr_ref)


def destroy_vdi(session: Any, vdi_ref: str | None) -> None:
    """Destroy a VDI we created, tolerating one already gone."""
    if not vdi_ref:
        return
    try:
        session.call_xenapi("VDI.destroy", vdi_ref)
    except xexc.XenAPIError as exc:
        if exc.code not in ("HANDLE_INVALID", "VDI_MISSING"):
            raise


def discard(session: Any, sr_ref: str, vdi_refs: list[str]) -> None:
    """Best-effort removal of half-made VDIs and their files (destroy, then scan so the GC runs)."""
    for ref in vdi_refs:
        with contextlib.suppress(Exception):
            destroy_vdi(session, ref)
    try:
        scan(session, sr_ref)
    except Exception:  # noqa: BLE001 - cleanup must not hide the original error
        LOG.warning("SR.scan of %s after a failed image transfer failed", sr_ref, exc_info=True)


def create_vdi(
    session: Any, sr_ref: str, size: int, name: str, other_config: dict[str, str] | None = None
) -> str:
    return session.call_xenapi(
        "VDI.create",
        {
            "name_label": name,
            "name_description": "",
            "SR": sr_ref,
            "virtual_size": str(int(size)),
            "type": "user",
            "sharable": False,
            "read_only": False,
            "other_config": dict(other_config or {}),
        },
    )
