"""What a resize checks before it changes anything: refusals, and how the disks will move.

Every refusal here happens before the first step, so the instance stays
ACTIVE and untouched, and its message says what to choose instead.
"""

from __future__ import annotations

from typing import Any

from xenapi_driver import conf as xconf
from xenapi_driver import vm_utils
from xenapi_driver.migrateops import resize_down
from xenapi_driver.migrateops.errors import _refuse

GiB = 1024**3

#: SR types whose VDIs are VHD files under /var/run/sr-mount (what the dom0 plug-ins read).
FILE_SR_TYPES = frozenset({"ext", "nfs", "file", "ext4", "local"})


def _flavor_sizes(flavor: Any) -> dict[str, int]:
    return {
        "root_gb": int(getattr(flavor, "root_gb", 0) or 0),
        "ephemeral_gb": int(getattr(flavor, "ephemeral_gb", 0) or 0),
        "swap_mb": int(getattr(flavor, "swap", 0) or 0),
    }


def check_resize(session: Any, instance: Any, flavor: Any, disks: list[dict[str, Any]]) -> None:
    """Refuse a flavor whose disks would lose data (a resize down only as resize_down allows)."""
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
            raise _refuse(f"cannot resize the root disk from {old['root_gb']} GiB to a flavor with root_gb 0")
        root = next(d for d in disks if d["role"] == "root")
        current = int(root["rec"]["virtual_size"])
        if new["root_gb"] and new["root_gb"] * GiB < current:
            # Resize down: only a root disk with one ext3/ext4 partition (resize_down.py).
            try:
                resize_down.check(session, root, new["root_gb"] * GiB, FILE_SR_TYPES)
            except resize_down.ShrinkRefused as exc:
                raise _refuse(
                    f"resizing the root disk down ({current / GiB:g} GiB to {new['root_gb']} GiB) "
                    f"is not possible: {exc.reason}; choose a flavor with root_gb >= "
                    f"{-(-current // GiB)}"
                ) from None


def choose_mode(session: Any, dest: str, disks: list[dict[str, Any]]) -> str:
    """``same-host``, ``shared`` (destination sees the SR), or the configured transport."""
    if dest == session.host_address:
        return "same-host"
    hosts = session.get_all_records_where("host", f'field "address" = "{vm_utils.quote(dest)}"')
    if hosts and disks:
        dest_host = next(iter(hosts))
        if all(sr_attached_to(session, d["rec"]["SR"], dest_host) for d in disks):
            return "shared"
    transport = xconf.CONF.xenserver.migration_transport
    if transport == "rsync":
        for disk in disks:
            sr = session.call_xenapi("SR.get_record", disk["rec"]["SR"])
            if sr["type"] not in FILE_SR_TYPES:
                raise _refuse(
                    f"the {disk['role']} disk is on a {sr['type']} SR ({sr['name_label']}); "
                    "the rsync migration transport needs VHD files on a file SR (EXT, NFS); "
                    "set [xenserver] migration_transport = xapi"
                )
    return transport


def sr_attached_to(session: Any, sr_ref: str, host_ref: str) -> bool:
    """Whether ``host_ref`` has ``sr_ref`` plugged (it can use the SR's VDIs directly)."""
    expr = (
        f'field "SR" = "{vm_utils.quote(sr_ref)}" and field "host" = "{vm_utils.quote(host_ref)}" '
        'and field "currently_attached" = "true"'
    )
    return bool(session.get_all_records_where("PBD", expr))
