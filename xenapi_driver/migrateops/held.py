"""Parents the destination already holds: find them, so the chain sent stops above them.

Before copying, the destination's ``migration.vhd_identities`` lists its
hidden, intact base copies by VHD unique id, virtual and physical size (for
example the base copy of an image its image cache holds). The chain sent
stops above the first parent whose identity, and whose whole parent
chain's, the destination holds; the received chain is linked onto that held
VDI, which is only read. A lookup that fails only means every parent is
sent.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from xenapi_driver.migrateops.checks import FILE_SR_TYPES

LOG = logging.getLogger(__name__)


def _send_length(item: dict[str, Any]) -> int:
    """How many VHDs of a chain are sent: all, or those above the parent the destination holds."""
    return int(item["held"]["seq"]) if item.get("held") else len(item["chain"])


def find_held(session: Any, dest: str, chains: list[dict[str, Any]], dest_session: Callable[[], Any]) -> None:
    """Set ``item["held"]`` for each chain whose parents the destination already holds.

    The destination is asked through its XAPI (``host.call_plugin`` of
    ``migration.vhd_identities`` on ``dest_session()``, a session opened like
    the xapi transport's, with this compute's credentials) for both
    transports: the rsync transport's SSH trust is dom0 to dom0, out of
    nova-compute's reach. Anything that stops the lookup (no XAPI session to
    the destination, a non-file SR, older plug-ins) only means every parent
    is sent, as before.
    """
    wanted = [item for item in chains if len(item["chain"]) > 1]
    if not wanted:
        return
    try:
        dsession = dest_session()
        dest_sr = _dest_file_sr(dsession)
        if dest_sr is None:
            return
        sources: dict[int, list[dict[str, Any] | None]] = {}
        for index, item in enumerate(wanted):
            sr_type = session.call_xenapi("SR.get_type", item["disk"]["rec"]["SR"])
            if sr_type not in FILE_SR_TYPES:
                continue
            parents = [member["uuid"] for member in item["chain"][1:]]
            found = json.loads(
                session.call_plugin(
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


def _dest_file_sr(dsession: Any) -> str | None:
    """UUID of the destination's instance SR when it is a file SR (VHD files the plug-in reads)."""
    from xenapi_driver import hostops

    sr_ref = hostops.HostOps(dsession).instance_sr()
    if not sr_ref:
        return None
    sr = dsession.call_xenapi("SR.get_record", sr_ref)
    return sr["uuid"] if sr["type"] in FILE_SR_TYPES else None


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
