"""Helpers for driver tests: Nova instances and seeded simulator VMs."""

from __future__ import annotations

import uuid
from typing import Any

from nova import objects

GiB = 1024**3

_next_id = iter(range(1, 1_000_000))


def make_instance(**fields: Any) -> objects.Instance:
    """A Nova Instance object; its ``name`` follows Nova's instance_name_template."""
    fields.setdefault("id", next(_next_id))
    fields.setdefault("uuid", str(uuid.uuid4()))
    return objects.Instance(**fields)


def seed_vm(
    sim: Any,
    instance: objects.Instance | None = None,
    *,
    host: Any = None,
    name: str | None = None,
    resident: bool = False,
    power_state: str = "Halted",
    **other_config: str,
) -> str:
    """Put a guest VM record in the pool's database (as if created earlier)."""
    db = sim.pools[0].db
    oc = dict(other_config)
    if instance is not None:
        oc["nova_uuid"] = instance.uuid
    host_ref = host.ref if host is not None else "OpaqueRef:NULL"
    return db.create(
        "VM",
        name_label=name or (instance.name if instance is not None else "foreign"),
        is_a_template=False,
        power_state=power_state,
        affinity=host_ref,
        resident_on=host_ref if resident else "OpaqueRef:NULL",
        other_config=oc,
        memory_static_max=GiB,
        memory_dynamic_max=GiB,
        memory_dynamic_min=GiB,
        memory_static_min=GiB,
        VCPUs_max=1,
        VCPUs_at_startup=1,
        HVM_boot_policy="BIOS order",
        domain_type="hvm",
    )


def xapi(sim: Any) -> Any:
    """A logged-in SDK session on the pool master (caller logs out)."""
    import XenAPI

    session = XenAPI.Session(sim.url)
    session.xenapi.login_with_password(sim.username, sim.password, "1.0", "xenapi-driver-tests")
    return session


class BlankImageSource:
    """Stands in for the image layer (a later issue): a blank root VDI made with real XAPI calls."""

    def __init__(self, session: Any, size: int = GiB) -> None:
        self.session = session
        self.size = size
        self.made: list[str] = []

    def root_vdi(self, context: Any, instance: Any, image_meta: Any, sr_ref: str) -> str:
        vdi = self.session.call_xenapi(
            "VDI.create",
            {
                "name_label": f"image for {instance.name}",
                "SR": sr_ref,
                "virtual_size": str(self.size),
                "type": "user",
                "sharable": False,
                "read_only": False,
                "other_config": {},
            },
        )
        self.made.append(vdi)
        return vdi


# Not costs of an operation: the power-state watcher's background long-poll,
# and logging in a pooled session (once per connection, when the pool grows).
_BACKGROUND = {"event.from", "session.login_with_password", "session.logout"}


def xapi_calls(sim: Any) -> dict[str, int]:
    """The simulator's call counts that an operation itself caused."""
    return {m: n for m, n in sim.call_counts.items() if m not in _BACKGROUND and n}
