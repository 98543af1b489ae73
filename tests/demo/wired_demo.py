"""Run the demo with the delegation lines the feature owners propose for ``driver.py``.

Not a test module: ``test_demo.py`` runs it as ``python tests/demo/wired_demo.py``.
While ``XenAPIDriver`` does not yet delegate snapshots, resize and live
migration, the demo reports those steps as "not available yet"; this proves
that the demo's own steps work once it does, against the real
implementations (``XenAPIImageSource.snapshot``, ``MigrateOps``,
``LiveMigrationOps``). Each method is added only when the driver lacks it, so
a driver that already delegates runs unchanged.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from xenapi_driver.demo import cloud  # noqa: E402


def _wire() -> None:
    from nova.virt import driver as nova_driver
    from xenapi_driver import live_migration as lm_mod
    from xenapi_driver import migrateops
    from xenapi_driver.driver import XenAPIDriver

    def mig(self):
        if getattr(self, "_demo_migrateops", None) is None:
            self._demo_migrateops = migrateops.MigrateOps(self._session, self.vmops)
        return self._demo_migrateops

    def lm(self):
        if getattr(self, "_demo_lmops", None) is None:
            self._demo_lmops = lm_mod.LiveMigrationOps(self._session, self.hostops)
        return self._demo_lmops

    def snapshot(self, context, instance, image_id, update_task_state):
        self.vmops.image_source.snapshot(context, instance, image_id, update_task_state)

    def migrate_disk_and_power_off(self, context, instance, dest, flavor, network_info,
                                   block_device_info=None, timeout=0, retry_interval=0):  # fmt: skip
        return mig(self).migrate_disk_and_power_off(
            context, instance, dest, flavor, network_info, block_device_info, timeout, retry_interval
        )

    def finish_migration(self, context, migration, instance, disk_info, network_info, image_meta,
                         resize_instance, allocations, block_device_info=None, power_on=True,
                         share_info=None):  # fmt: skip
        mig(self).finish_migration(context, migration, instance, disk_info, network_info, image_meta,
                                   resize_instance, block_device_info, power_on)  # fmt: skip

    def confirm_migration(self, context, migration, instance, network_info):
        mig(self).confirm_migration(context, migration, instance, network_info)

    def finish_revert_migration(self, context, instance, network_info, migration, block_device_info=None,
                                power_on=True, share_info=None):  # fmt: skip
        mig(self).finish_revert_migration(
            context, instance, network_info, migration, block_device_info, power_on
        )

    def check_can_live_migrate_destination(self, context, instance, src_compute_info, dst_compute_info,
                                           block_migration=False, disk_over_commit=False):  # fmt: skip
        return lm(self).check_can_live_migrate_destination(
            context, instance, src_compute_info, dst_compute_info, block_migration, disk_over_commit
        )

    def cleanup_live_migration_destination_check(self, context, dest_check_data):
        lm(self).cleanup_live_migration_destination_check(context, dest_check_data)

    def check_can_live_migrate_source(self, context, instance, dest_check_data, block_device_info=None):
        return lm(self).check_can_live_migrate_source(context, instance, dest_check_data, block_device_info)

    def pre_live_migration(self, context, instance, block_device_info, network_info, disk_info, migrate_data):
        return lm(self).pre_live_migration(
            context, instance, block_device_info, network_info, disk_info, migrate_data
        )

    def live_migration(self, context, instance, dest, post_method, recover_method, block_migration=False,
                       migrate_data=None):  # fmt: skip
        lm(self).live_migration(
            context, instance, dest, post_method, recover_method, block_migration, migrate_data
        )

    def post_live_migration(self, context, instance, block_device_info, migrate_data=None):
        lm(self).post_live_migration(context, instance, block_device_info, migrate_data)

    def post_live_migration_at_source(self, context, instance, network_info):
        lm(self).post_live_migration_at_source(context, instance, network_info)

    def post_live_migration_at_destination(self, context, instance, network_info, block_migration=False,
                                           block_device_info=None):  # fmt: skip
        lm(self).post_live_migration_at_destination(
            context, instance, network_info, block_migration, block_device_info
        )

    def rollback_live_migration_at_destination(self, context, instance, network_info, block_device_info,
                                               destroy_disks=True, migrate_data=None):  # fmt: skip
        lm(self).rollback_live_migration_at_destination(
            context, instance, network_info, block_device_info, destroy_disks, migrate_data
        )

    groups = [
        [snapshot],
        [migrate_disk_and_power_off, finish_migration, confirm_migration, finish_revert_migration],
        [check_can_live_migrate_destination, cleanup_live_migration_destination_check,
         check_can_live_migrate_source, pre_live_migration, live_migration, post_live_migration,
         post_live_migration_at_source, post_live_migration_at_destination,
         rollback_live_migration_at_destination],
    ]  # fmt: skip
    base = nova_driver.ComputeDriver
    for group in groups:
        # A feature the driver implements already is left exactly as it is.
        if any(getattr(XenAPIDriver, f.__name__) is not getattr(base, f.__name__, None) for f in group):
            continue
        for f in group:
            setattr(XenAPIDriver, f.__name__, f)


_prepare = cloud.prepare_nova


def _prepare_and_wire(log_path: Path) -> None:
    _prepare(log_path)
    _wire()


cloud.prepare_nova = _prepare_and_wire

if __name__ == "__main__":
    from xenapi_driver.demo import runner

    sys.exit(runner.main(sys.argv[1:]))
