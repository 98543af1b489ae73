"""The resize journal and markers: what a resize writes on XAPI objects so any step can be undone.

Every completed step of ``migrate_disk_and_power_off`` is appended to a JSON
journal in the kept VM's ``other_config['nova_resize']``; VDIs a resize
creates are tagged (snapshot, incoming) so a revert, a confirm or
``recover_host`` finds them after a nova-compute crash. Nothing secret is
ever written here.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from xenapi_driver import exception as xexc
from xenapi_driver import vm_utils

JOURNAL_KEY = "nova_resize"  # VM other_config: JSON journal of the steps done
RESIZE_OF_KEY = "nova_resize_of"  # kept original VM: the instance UUID it belongs to
INCOMING_KEY = "nova_resize_incoming"  # destination VDI imported but not yet given to a VM
SNAPSHOT_KEY = "nova_resize_snapshot"  # source snapshot VDI made by a resize (destroyed at the end)
KEPT_SUFFIX = "-orig"

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


def read_journal(session: Any, vm_ref: str) -> dict[str, Any]:
    """The VM's journal; an unreadable one counts as empty (nothing to undo)."""
    other = session.call_xenapi("VM.get_other_config", vm_ref)
    try:
        return json.loads(other.get(JOURNAL_KEY) or "{}")
    except ValueError:
        return {}


def write_journal(session: Any, vm_ref: str, journal: dict[str, Any]) -> None:
    """Replace the VM's journal (XAPI has no update of one other_config key)."""
    with contextlib.suppress(xexc.XenAPIError):
        session.call_xenapi("VM.remove_from_other_config", vm_ref, JOURNAL_KEY)
    session.call_xenapi("VM.add_to_other_config", vm_ref, JOURNAL_KEY, json.dumps(journal, sort_keys=True))


def find_kept(session: Any, instance: Any) -> tuple[str, dict[str, Any]] | None:
    """The original VM kept for revert (or the instance VM with an open journal)."""
    for name in (instance.name + KEPT_SUFFIX, instance.name):
        for ref in session.call_xenapi("VM.get_by_name_label", name):
            rec = session.get_rec("VM", ref)
            if rec is None:
                continue
            other = rec.get("other_config") or {}
            if other.get(RESIZE_OF_KEY) == instance.uuid or (
                JOURNAL_KEY in other and other.get(vm_utils.NOVA_UUID_KEY) == instance.uuid
            ):
                return ref, rec
    return None
