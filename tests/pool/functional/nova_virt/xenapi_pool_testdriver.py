"""The driver the pool functional test loads: XenAPIDriver plus test-only parts.

Loaded by Nova as ``compute_driver = xenapi_pool_testdriver.PoolTestDriver``
(this directory is put on ``nova.virt.__path__``). While driver.py lacks the
lines issue 9 proposes for it (init_host/cleanup_host reconciling, maintenance
mode, the live-migration delegations), ``_ProposedDriverLines`` carries exactly
those lines; once driver.py has them, only the test-only parts remain: each
compute's VM UUID (in production ``[xenserver] compute_vm_uuid`` or
``/sys/hypervisor/uuid``) and per-compute node UUIDs (five computes in one
process).
"""

import uuid

import nova.context
from oslo_log import log as logging

from xenapi_driver import live_migration, pool
from xenapi_driver.driver import XenAPIDriver

LOG = logging.getLogger(__name__)


def _node_uuid(nodename):
    return str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{nodename}.xenapi-pool-test"))


#: Whether driver.py already has the lines below (then only the test-only parts apply).
DRIVER_HAS_POOL_LINES = "check_can_live_migrate_source" in XenAPIDriver.__dict__


class _ProposedDriverLines(XenAPIDriver):
    """The lines proposed for driver.py, used while driver.py lacks them."""

    def __init__(self, virtapi, read_only=False):
        super().__init__(virtapi, read_only=read_only)
        self._pool = None
        self._pool_thread = None
        self._migration = None

    # ---- lines for driver.py: init_host / cleanup_host --------------------

    def init_host(self, host):
        super().init_host(host)
        if self._pool is None:
            self._pool = pool.ResourcePool(self._session, host)
            self._migration = live_migration.LiveMigrationOps(self._session, self._hostops)
        try:
            self._pool.reconcile(nova.context.get_admin_context())
        except Exception:
            LOG.exception("Reconciling pool aggregates at start-up failed; the periodic run retries")
        if self._pool_thread is None:
            self._pool_thread = pool.ReconcileThread(
                self._pool, nova.context.get_admin_context, pool.RECONCILE_INTERVAL
            )
            self._pool_thread.start()

    def cleanup_host(self, host):
        thread, self._pool_thread = self._pool_thread, None
        if thread is not None:
            thread.stop()
        self._pool = self._migration = None
        super().cleanup_host(host)

    # ---- line for driver.py: host maintenance keeps Nova's records true ----

    def host_maintenance_mode(self, host, mode):
        return pool.host_maintenance_mode(nova.context.get_admin_context(), self._session, host, mode)

    # ---- lines for driver.py: live migration ------------------------------

    @property
    def migration(self):
        if self._migration is None:
            raise RuntimeError("XenAPIDriver.init_host() has not run yet: no XAPI session")
        return self._migration

    def check_can_live_migrate_destination(
        self,
        context,
        instance,
        src_compute_info,
        dst_compute_info,
        block_migration=False,
        disk_over_commit=False,
    ):
        return self.migration.check_can_live_migrate_destination(
            context, instance, src_compute_info, dst_compute_info, block_migration, disk_over_commit
        )

    def cleanup_live_migration_destination_check(self, context, dest_check_data):
        self.migration.cleanup_live_migration_destination_check(context, dest_check_data)

    def check_can_live_migrate_source(self, context, instance, dest_check_data, block_device_info=None):
        return self.migration.check_can_live_migrate_source(
            context, instance, dest_check_data, block_device_info
        )

    def pre_live_migration(self, context, instance, block_device_info, network_info, disk_info, migrate_data):
        return self.migration.pre_live_migration(
            context, instance, block_device_info, network_info, disk_info, migrate_data
        )

    def live_migration(
        self, context, instance, dest, post_method, recover_method, block_migration=False, migrate_data=None
    ):
        self.migration.live_migration(
            context, instance, dest, post_method, recover_method, block_migration, migrate_data
        )

    def live_migration_force_complete(self, instance):
        self.migration.live_migration_force_complete(instance)

    def live_migration_abort(self, instance):
        self.migration.live_migration_abort(instance)

    def post_live_migration(self, context, instance, block_device_info, migrate_data=None):
        self.migration.post_live_migration(context, instance, block_device_info, migrate_data)

    def post_live_migration_at_source(self, context, instance, network_info):
        self.migration.post_live_migration_at_source(context, instance, network_info)

    def post_live_migration_at_destination(
        self, context, instance, network_info, block_migration=False, block_device_info=None
    ):
        self.migration.post_live_migration_at_destination(
            context, instance, network_info, block_migration, block_device_info
        )

    def rollback_live_migration_at_destination(
        self, context, instance, network_info, block_device_info, destroy_disks=True, migrate_data=None
    ):
        self.migration.rollback_live_migration_at_destination(
            context, instance, network_info, block_device_info, destroy_disks, migrate_data
        )


class PoolTestDriver(XenAPIDriver if DRIVER_HAS_POOL_LINES else _ProposedDriverLines):
    """What the functional test loads: the driver plus test-only parts."""

    #: compute service host -> UUID of the VM it "runs in" (set by the test;
    #: in production ``[xenserver] compute_vm_uuid`` or ``/sys/hypervisor/uuid``).
    compute_vm_uuids: dict = {}

    def init_host(self, host):
        super().init_host(host)
        self._pool._compute_vm_uuid = self.compute_vm_uuids.get(host)

    # Nova caches ONE local node UUID per process (one compute per process in
    # production); five computes share this process, so each gets its own.

    def get_nodenames_by_uuid(self, refresh=False):
        nodename = self.get_available_nodes(refresh=refresh)[0]
        return {_node_uuid(nodename): nodename}

    def get_available_resource(self, nodename):
        resources = super().get_available_resource(nodename)
        resources["uuid"] = _node_uuid(nodename)
        return resources
