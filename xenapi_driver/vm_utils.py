"""How Nova instances map to XAPI VMs, as pure functions over XAPI records.

Kept free of I/O so the mapping rules (which VMs are this compute's
instances, what a XAPI power state means to Nova) are stated once and shared
by VMOps, HostOps and the power-state event watcher.

* An instance's VM carries ``other_config['nova_uuid'] = instance.uuid`` and
  the name label ``instance.name`` (Nova's stable ``instance_name_template``).
  The name label finds it (``VM.get_by_name_label``; XAPI cannot search
  inside maps); the UUID proves the VM really is that instance.
* A rescue VM carries ``other_config['nova_rescue'] = "true"`` as well and is
  named ``<instance.name>-rescue``; it is never reported as an instance.
* A VM counts as this compute's when it is resident on the managed host, or
  not resident anywhere (halted, suspended) and assigned to it (``affinity``).
"""

from __future__ import annotations

from typing import Any

from nova.compute import power_state

NULL_REF = "OpaqueRef:NULL"

NOVA_UUID_KEY = "nova_uuid"
RESCUE_KEY = "nova_rescue"
RESCUE_SUFFIX = "-rescue"

# XAPI's vm_power_state (case as XAPI sends it) -> Nova's power_state.
XAPI_POWER_STATE = {
    "halted": power_state.SHUTDOWN,
    "paused": power_state.PAUSED,
    "running": power_state.RUNNING,
    "suspended": power_state.SUSPENDED,
    "crashed": power_state.CRASHED,
}

# Server-side filter for guest VMs resident on or assigned to one host.
_GUESTS_OF_HOST = (
    'field "is_a_template" = "false" and field "is_control_domain" = "false" and '
    '(field "resident_on" = "{host}" or field "affinity" = "{host}")'
)


def quote(value: str) -> str:
    """Quote ``value`` for a string literal in XAPI's query language."""
    return value.replace("\\", "\\\\").replace('"', '\\"')


def guests_of_host_expr(host_ref: str) -> str:
    """``get_all_records_where`` expression for the guest VMs of ``host_ref``."""
    return _GUESTS_OF_HOST.format(host=quote(host_ref))


def to_power_state(xapi_state: str) -> int:
    """Nova's power state for XAPI's ``power_state`` (unknown states -> NOSTATE)."""
    return XAPI_POWER_STATE.get(str(xapi_state).lower(), power_state.NOSTATE)


def nova_uuid(record: dict[str, Any]) -> str | None:
    """The Nova instance UUID a VM record belongs to, or None for foreign VMs."""
    return (record.get("other_config") or {}).get(NOVA_UUID_KEY) or None


def is_rescue(record: dict[str, Any]) -> bool:
    return str((record.get("other_config") or {}).get(RESCUE_KEY, "")).lower() == "true"


def is_instance_vm(record: dict[str, Any]) -> bool:
    """A Nova instance's own VM: carries a Nova UUID, not a template, not a rescue VM."""
    return (
        nova_uuid(record) is not None
        and not record.get("is_a_template")
        and not record.get("is_control_domain")
        and not is_rescue(record)
    )


def belongs_to_host(record: dict[str, Any], host_ref: str) -> bool:
    """Resident on ``host_ref``, or resident nowhere and assigned to it."""
    resident = record.get("resident_on") or NULL_REF
    if resident != NULL_REF:
        return resident == host_ref
    return (record.get("affinity") or NULL_REF) == host_ref


def instance_vms_of_host(records: dict[str, dict[str, Any]], host_ref: str) -> dict[str, dict[str, Any]]:
    """The instance VMs among ``records`` that are this host's."""
    return {
        ref: rec for ref, rec in records.items() if is_instance_vm(rec) and belongs_to_host(rec, host_ref)
    }


def vms_named(session: Any, name_label: str) -> dict[str, dict[str, Any]]:
    """Records of the VMs called ``name_label``: one call, plus one per VM of that name.

    A VM that vanishes between the two calls is skipped.
    """
    found = {}
    for ref in session.call_xenapi("VM.get_by_name_label", name_label):
        record = session.get_rec("VM", ref)
        if record is not None:
            found[ref] = record
    return found


def find_instance_vm(session: Any, instance: Any) -> tuple[str, dict[str, Any]] | None:
    """The instance's own VM: found by its stable name label, proved by its Nova UUID."""
    return pick_instance_vm(vms_named(session, instance.name), instance.uuid)


def pick_instance_vm(
    records: dict[str, dict[str, Any]], instance_uuid: str
) -> tuple[str, dict[str, Any]] | None:
    """The (ref, record) of ``instance_uuid``'s own VM among ``records``, if any."""
    for ref, rec in records.items():
        if is_instance_vm(rec) and nova_uuid(rec) == instance_uuid:
            return ref, rec
    return None
