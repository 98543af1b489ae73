"""How a resize fails: refused (the instance stays as it was) or a step failed (rolled back).

Nova shows a refusal's reason to the user and keeps the instance ACTIVE; a
step that fails after something changed is rolled back by
:meth:`~xenapi_driver.migrateops.MigrateOps.migrate_disk_and_power_off` and
then refused with the step's reason.
"""

from __future__ import annotations

from nova import exception as nova_exception


class ResizeStepFailed(Exception):
    """Internal: a step failed; carries the reason shown to the user."""


def _refuse(reason: str) -> nova_exception.InstanceFaultRollback:
    """Nova's way to refuse a resize and keep the instance as it was (ACTIVE, not ERROR)."""
    return nova_exception.InstanceFaultRollback(inner_exception=nova_exception.ResizeError(reason=reason))
