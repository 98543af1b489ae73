"""The pure mapping rules: XAPI states, capabilities and ownership as Nova sees them."""

from __future__ import annotations

import pytest
from nova.compute import power_state

from nova.virt import event as virtevent
from xenapi_driver import events, hostops, vm_utils

HOST, OTHER, NULL = "OpaqueRef:h", "OpaqueRef:o", "OpaqueRef:NULL"


@pytest.mark.parametrize(
    ("xapi", "nova"),
    [
        ("Running", power_state.RUNNING),
        ("Halted", power_state.SHUTDOWN),
        ("Paused", power_state.PAUSED),
        ("Suspended", power_state.SUSPENDED),
        ("Crashed", power_state.CRASHED),
        ("running", power_state.RUNNING),
        ("Something new", power_state.NOSTATE),
    ],
)
def test_power_states(xapi: str, nova: int) -> None:
    assert vm_utils.to_power_state(xapi) == nova


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        (None, "Running", virtevent.EVENT_LIFECYCLE_STARTED),
        ("Halted", "Running", virtevent.EVENT_LIFECYCLE_STARTED),
        ("Paused", "Running", virtevent.EVENT_LIFECYCLE_RESUMED),
        ("Suspended", "Running", virtevent.EVENT_LIFECYCLE_RESUMED),
        ("Running", "Halted", virtevent.EVENT_LIFECYCLE_STOPPED),
        ("Running", "Paused", virtevent.EVENT_LIFECYCLE_PAUSED),
        ("Running", "Suspended", virtevent.EVENT_LIFECYCLE_SUSPENDED),
        ("Running", "Running", None),
    ],
)
def test_lifecycle_transitions(before: str | None, after: str, expected: int | None) -> None:
    assert events.transition(before, after) == expected


def test_supported_instances_from_host_capabilities() -> None:
    caps = ["xen-3.0-x86_64", "hvm-3.0-x86_32", "hvm-3.0-x86_32p", "hvm-3.0-x86_64", "unknown-1-z80"]
    assert hostops.supported_instances(caps) == [
        ("x86_64", "xen", "xen"),
        ("i686", "xen", "hvm"),
        ("x86_64", "xen", "hvm"),
    ]


def vm(resident: str = NULL, affinity: str = NULL, **other_config: str) -> dict:
    return {
        "resident_on": resident,
        "affinity": affinity,
        "is_a_template": False,
        "is_control_domain": False,
        "other_config": other_config,
    }


@pytest.mark.parametrize(
    ("record", "ours"),
    [
        (vm(HOST, HOST, nova_uuid="u"), True),
        (vm(NULL, HOST, nova_uuid="u"), True),  # halted, assigned here
        (vm(OTHER, HOST, nova_uuid="u"), False),  # running elsewhere
        (vm(NULL, OTHER, nova_uuid="u"), False),
        (vm(HOST, HOST), False),  # not Nova's
        (vm(HOST, HOST, nova_uuid="u", nova_rescue="true"), False),  # a rescue VM
    ],
)
def test_which_vms_are_this_hosts_instances(record: dict, ours: bool) -> None:
    assert bool(vm_utils.instance_vms_of_host({"OpaqueRef:v": record}, HOST)) is ours


def test_query_strings_are_quoted() -> None:
    assert vm_utils.quote('a"b\\c') == 'a\\"b\\\\c'
    assert '"OpaqueRef:h"' in vm_utils.guests_of_host_expr(HOST)
