"""Records and helpers the simulator tests share (through the real XenAPI SDK).

Every ``VM.create`` needs XAPI's full set of required fields; one builder
keeps that list in one place, and each test passes only what it cares about.
"""

from __future__ import annotations

from typing import Any

import pytest
import XenAPI

MiB = 1024 * 1024
NULL = "OpaqueRef:NULL"


def vm_record(name: str, memory: int = 128 * MiB, **overrides: Any) -> dict[str, Any]:
    """A complete ``VM.create`` record: ``memory`` bytes for every memory field, 1 vCPU, PV via pygrub."""
    record = {
        "name_label": name,
        "name_description": "",
        "user_version": "1",
        "is_a_template": False,
        "affinity": NULL,
        "memory_static_max": str(memory),
        "memory_dynamic_max": str(memory),
        "memory_dynamic_min": str(memory),
        "memory_static_min": str(memory),
        "VCPUs_params": {},
        "VCPUs_max": "1",
        "VCPUs_at_startup": "1",
        "actions_after_shutdown": "destroy",
        "actions_after_reboot": "restart",
        "actions_after_crash": "destroy",
        "PV_bootloader": "pygrub",
        "PV_kernel": "",
        "PV_ramdisk": "",
        "PV_args": "",
        "PV_bootloader_args": "",
        "PV_legacy_args": "",
        "HVM_boot_policy": "",
        "HVM_boot_params": {},
        "platform": {},
        "PCI_bus": "",
        "other_config": {},
        "recommendations": "",
        "xenstore_data": {},
    }
    record.update(overrides)
    return record


def fails(call: Any, *args: Any) -> list[str]:
    """The XAPI error (code and parameters) that ``call(*args)`` raises."""
    with pytest.raises(XenAPI.Failure) as info:
        call(*args)
    return info.value.details
