"""Nova's compute driver for XenServer / XCP-ng: ``compute_driver = xenapi.XenAPIDriver``.

``XenAPIDriver`` is deliberately thin: it owns one :class:`XenAPISession` to
the pool master and hands every call to :class:`~xenapi_driver.vmops.VMOps`
(instance lifecycle) or :class:`~xenapi_driver.hostops.HostOps` (resources,
placement, host actions). Keeping the XAPI logic in those small modules lets
each be tested on its own against the simulator.

Rules this module follows, and why:

* Nothing connects at import or construction. Nova builds the driver with only
  ``virtapi`` (``nova.virt.driver.load_compute_driver``) and tools such as
  ``nova-manage`` or the config generator may import it without a XenServer;
  the session is created in :meth:`XenAPIDriver.init_host`.
* Every overridden method has exactly Nova 34's signature, annotations
  included (``tests/nova`` runs Nova's ``SubclassSignatureTestCase``). That
  is why these methods carry no type hints of their own: a hint the base class
  lacks is a signature difference.
* Legacy hooks Nova removed (aggregate hooks, bandwidth counters,
  ``get_console_pool_info``, ...) are not implemented.
* No eventlet: plain threads, so the driver runs in Nova 34's native
  threading mode, which makes ``import eventlet`` fail.
"""

import nova.conf
import nova.context
import os_resource_classes as orc
from oslo_log import log as logging

from nova import objects
from nova.virt import driver
from xenapi_driver import (
    agent,
    console,
    events,
    hostops,
    live_migration,
    migrateops,
    pool,
    vmops,
    volumeops,
)
from xenapi_driver import conf as _conf  # noqa: F401  (registers the [xenserver] options)
from xenapi_driver.image import XenAPIImageSource

CONF = nova.conf.CONF
LOG = logging.getLogger(__name__)


class DriverNotInitialized(RuntimeError):
    """A driver method needing XAPI ran before ``init_host`` connected."""


class XenAPIDriver(driver.ComputeDriver):
    """A Nova compute driver managing one XenServer host through its pool master."""

    # Only what this driver really does today. Each capability is switched on
    # in the same change that implements and tests it (capabilities become
    # placement traits, which the scheduler trusts).
    capabilities = dict(
        driver.ComputeDriver.capabilities,
        # VIF.create + VIF.plug on a running VM (VMOps.attach_interface).
        supports_attach_interface=True,
        # Cinder volume growth reaches a running guest (VolumeOps.extend_volume).
        supports_extend_volume=True,
        # The image layer (xenapi_driver.image): an image cache in the SR, and these formats.
        has_imagecache=True,
        supports_image_type_vhd=True,
        supports_image_type_raw=True,
        supports_image_type_iso=True,
        supports_image_type_ami=True,
        supports_image_type_aki=True,
        supports_image_type_ari=True,
    )

    #: Seconds each ``event.from`` long-poll may block (bounds how long a
    #: stopping watcher lingers; changes are still reported at once).
    EVENT_POLL_TIMEOUT = 10.0

    def __init__(self, virtapi, read_only=False):
        super().__init__(virtapi)
        self._read_only = read_only
        self._session = None
        self._vmops = None
        self._hostops = None
        self._volumeops = None
        self._agentops = None
        self._consoleops = None
        self._images = None
        self._migrateops = None
        self._migration = None
        self._pool = None
        self._pool_thread = None
        self._watcher = None

    # -- connection ---------------------------------------------------------

    def _connect(self) -> None:
        """Create the XAPI session and the helpers that use it."""
        # Imported here so that loading the driver never needs the session
        # module's dependencies or a reachable XenServer.
        from xenapi_driver.session import XenAPISession

        session = XenAPISession.from_conf()
        self._session = session
        self._hostops = hostops.HostOps(session)
        self._volumeops = volumeops.VolumeOps(session)
        self._images = XenAPIImageSource(session, sr_finder=self._hostops.instance_sr)
        self._vmops = vmops.VMOps(
            session,
            self.virtapi,
            hostops=self._hostops,
            image_source=self._images,
            volumeops=self._volumeops,
        )
        self._volumeops.lookup = self._vmops.lookup
        self._migrateops = migrateops.MigrateOps(session, self._vmops)
        self._migration = live_migration.LiveMigrationOps(session, self._hostops)
        self._agentops = agent.AgentOps(session, lookup=self._vmops.lookup)
        self._consoleops = console.ConsoleOps(session, lookup=self._vmops.lookup)

    @property
    def vmops(self) -> vmops.VMOps:
        return self._required(self._vmops)

    @property
    def hostops(self) -> hostops.HostOps:
        return self._required(self._hostops)

    @staticmethod
    def _required(ops):
        """``ops``, or a clear error when a method runs before ``init_host`` connected."""
        if ops is None:
            raise DriverNotInitialized("XenAPIDriver.init_host() has not run yet: no XAPI session")
        return ops

    def init_host(self, host):
        if self._session is None:
            self._connect()
        # Refuse to start (with the install command in the message) when the
        # managed host's dom0 plug-ins are missing or older than this driver needs.
        self._session.check_plugin_version()
        self.hostops.init_host(host)
        # Disks a killed finish_migration imported but never attached (resize
        # journals themselves are finished by Nova's own init_host recovery).
        self._migrateops.recover_host()
        self._start_pool_reconcile(host)
        if self._watcher is None:
            # Power changes made outside Nova reach it as lifecycle events.
            self._watcher = events.PowerStateWatcher(
                self._session, self.emit_event, poll_timeout=self.EVENT_POLL_TIMEOUT
            )
            self._watcher.start()

    def _start_pool_reconcile(self, host: str) -> None:
        """Converge XAPI to this host's pool aggregates now and then periodically.

        Nova 34 no longer calls drivers when aggregates change, and offers no
        periodic hook with a context, so a driver-owned thread does it.
        """
        if self._pool is None:
            self._pool = pool.ResourcePool(self._session, host)
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
        pool_thread, self._pool_thread = self._pool_thread, None
        if pool_thread is not None:
            pool_thread.stop()
        consoleops, self._consoleops = self._consoleops, None
        if consoleops is not None:
            consoleops.close()
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.stop(timeout=0)  # ends when its poll returns; the session closes below
        session, self._session = self._session, None
        self._vmops = self._hostops = self._volumeops = self._agentops = self._images = None
        self._migrateops = self._migration = self._pool = None
        if session is not None:
            session.close()

    # -- instance lifecycle (VMOps) ----------------------------------------

    def spawn(
        self,
        context,
        instance,
        image_meta,
        injected_files,
        admin_password,
        allocations,
        network_info=None,
        block_device_info=None,
        power_on=True,
        accel_info=None,
    ):
        self.vmops.spawn(
            context,
            instance,
            image_meta,
            injected_files,
            admin_password,
            allocations,
            network_info=network_info,
            block_device_info=block_device_info,
            power_on=power_on,
        )
        if power_on:
            # Password, injected files and network reach the guest through its agent, if any.
            self._required(self._agentops).configure_new_instance(
                instance, image_meta, injected_files, admin_password
            )

    def destroy(
        self,
        context,
        instance,
        network_info,
        block_device_info=None,
        destroy_disks=True,
        destroy_secrets=True,
    ):
        self.vmops.destroy(
            instance, network_info, block_device_info=block_device_info, destroy_disks=destroy_disks
        )

    def cleanup(
        self,
        context,
        instance,
        network_info,
        block_device_info=None,
        destroy_disks=True,
        migrate_data=None,
        destroy_vifs=True,
        destroy_secrets=True,
    ):
        self.vmops.cleanup(
            instance,
            network_info,
            block_device_info=block_device_info,
            destroy_disks=destroy_disks,
            destroy_vifs=destroy_vifs,
        )

    def reboot(
        self,
        context,
        instance,
        network_info,
        reboot_type,
        block_device_info=None,
        bad_volumes_callback=None,
        accel_info=None,
        share_info=None,
    ):
        self.vmops.reboot(instance, reboot_type, bad_volumes_callback=bad_volumes_callback)

    def power_off(self, instance, timeout=0, retry_interval=0):
        self.vmops.power_off(instance, timeout=timeout, retry_interval=retry_interval)

    def power_on(
        self,
        context,
        instance,
        network_info,
        block_device_info=None,
        accel_info=None,
        share_info=None,
    ):
        self.vmops.power_on(instance)

    def pause(self, instance):
        self.vmops.pause(instance)

    def unpause(self, instance):
        self.vmops.unpause(instance)

    def suspend(self, context, instance):
        self.vmops.suspend(instance)

    def resume(self, context, instance, network_info, block_device_info=None, share_info=None):
        self.vmops.resume(instance)

    def soft_delete(self, instance):
        self.vmops.soft_delete(instance)

    def restore(self, instance):
        self.vmops.restore(instance)

    def rescue(
        self,
        context,
        instance,
        network_info,
        image_meta,
        rescue_password,
        block_device_info,
        share_info,
    ):
        self.vmops.rescue(context, instance, network_info, image_meta, rescue_password)

    def unrescue(
        self,
        context: nova.context.RequestContext,
        instance: "objects.Instance",
    ):
        self.vmops.unrescue(instance)

    def resume_state_on_host_boot(self, context, instance, network_info, share_info, block_device_info=None):
        self.vmops.resume_state_on_host_boot(instance)

    def poll_rebooting_instances(self, timeout, instances):
        self.vmops.poll_rebooting_instances(timeout, instances)

    def trigger_crash_dump(self, instance):
        self.vmops.trigger_crash_dump(instance)

    def attach_interface(self, context, instance, image_meta, vif):
        self.vmops.attach_interface(instance, vif)

    def detach_interface(self, context, instance, vif):
        self.vmops.detach_interface(instance, vif)

    # -- images and snapshots (xenapi_driver.image) -------------------------

    def snapshot(self, context, instance, image_id, update_task_state):
        self._required(self._images).snapshot(context, instance, image_id, update_task_state)

    def manage_image_cache(self, context, all_instances):
        self._required(self._images).manage_image_cache(context, all_instances)

    def cache_image(self, context, image_id):
        return self._required(self._images).cache_image(context, image_id)

    # -- resize and cold migration (MigrateOps) ------------------------------

    def migrate_disk_and_power_off(
        self,
        context,
        instance,
        dest,
        flavor,
        network_info,
        block_device_info=None,
        timeout=0,
        retry_interval=0,
    ):
        return self._required(self._migrateops).migrate_disk_and_power_off(
            context, instance, dest, flavor, network_info, block_device_info, timeout, retry_interval
        )

    def finish_migration(
        self,
        context,
        migration,
        instance,
        disk_info,
        network_info,
        image_meta,
        resize_instance,
        allocations,
        block_device_info=None,
        power_on=True,
        share_info=None,
    ):
        self._required(self._migrateops).finish_migration(
            context,
            migration,
            instance,
            disk_info,
            network_info,
            image_meta,
            resize_instance,
            block_device_info,
            power_on,
        )

    def confirm_migration(self, context, migration, instance, network_info):
        self._required(self._migrateops).confirm_migration(context, migration, instance, network_info)

    def finish_revert_migration(
        self,
        context,
        instance,
        network_info,
        migration,
        block_device_info=None,
        power_on=True,
        share_info=None,
    ):
        self._required(self._migrateops).finish_revert_migration(
            context, instance, network_info, migration, block_device_info, power_on
        )

    # -- live migration (LiveMigrationOps) -----------------------------------

    def check_can_live_migrate_destination(
        self,
        context,
        instance,
        src_compute_info,
        dst_compute_info,
        block_migration=False,
        disk_over_commit=False,
    ):
        return self._required(self._migration).check_can_live_migrate_destination(
            context, instance, src_compute_info, dst_compute_info, block_migration, disk_over_commit
        )

    def cleanup_live_migration_destination_check(self, context, dest_check_data):
        self._required(self._migration).cleanup_live_migration_destination_check(context, dest_check_data)

    def check_can_live_migrate_source(self, context, instance, dest_check_data, block_device_info=None):
        return self._required(self._migration).check_can_live_migrate_source(
            context, instance, dest_check_data, block_device_info
        )

    def pre_live_migration(self, context, instance, block_device_info, network_info, disk_info, migrate_data):
        return self._required(self._migration).pre_live_migration(
            context, instance, block_device_info, network_info, disk_info, migrate_data
        )

    def live_migration(
        self, context, instance, dest, post_method, recover_method, block_migration=False, migrate_data=None
    ):
        self._required(self._migration).live_migration(
            context, instance, dest, post_method, recover_method, block_migration, migrate_data
        )

    def live_migration_force_complete(self, instance):
        self._required(self._migration).live_migration_force_complete(instance)

    def live_migration_abort(self, instance):
        self._required(self._migration).live_migration_abort(instance)

    def post_live_migration(self, context, instance, block_device_info, migrate_data=None):
        self._required(self._migration).post_live_migration(
            context, instance, block_device_info, migrate_data
        )

    def post_live_migration_at_source(self, context, instance, network_info):
        self._required(self._migration).post_live_migration_at_source(context, instance, network_info)

    def post_live_migration_at_destination(
        self, context, instance, network_info, block_migration=False, block_device_info=None
    ):
        self._required(self._migration).post_live_migration_at_destination(
            context, instance, network_info, block_migration, block_device_info
        )

    def rollback_live_migration_at_destination(
        self, context, instance, network_info, block_device_info, destroy_disks=True, migrate_data=None
    ):
        self._required(self._migration).rollback_live_migration_at_destination(
            context, instance, network_info, block_device_info, destroy_disks, migrate_data
        )

    def get_info(self, instance, use_cache=True):
        return self.vmops.get_info(instance)

    def list_instances(self):
        return self.vmops.list_instances()

    def list_instance_uuids(self):
        return self.vmops.list_instance_uuids()

    def get_diagnostics(self, instance):
        return self.vmops.get_diagnostics(instance)

    def get_instance_diagnostics(self, instance):
        return self.vmops.get_instance_diagnostics(instance)

    # -- volumes, guest agent and consoles ----------------------------------

    def get_volume_connector(self, instance):
        return self._required(self._volumeops).get_volume_connector(instance)

    def attach_volume(
        self, context, connection_info, instance, mountpoint, disk_bus=None, device_type=None, encryption=None
    ):
        self._required(self._volumeops).attach_volume(
            connection_info, instance, mountpoint, encryption=encryption
        )

    def detach_volume(self, context, connection_info, instance, mountpoint, encryption=None):
        self._required(self._volumeops).detach_volume(connection_info, instance, mountpoint)

    def swap_volume(self, context, old_connection_info, new_connection_info, instance, mountpoint, resize_to):
        self._required(self._volumeops).swap_volume(
            old_connection_info, new_connection_info, instance, mountpoint, resize_to
        )

    def extend_volume(self, context, connection_info, instance, requested_size):
        self._required(self._volumeops).extend_volume(connection_info, instance, requested_size)

    def set_admin_password(self, instance, new_pass):
        self._required(self._agentops).set_admin_password(instance, new_pass)

    def get_console_output(self, context, instance):
        return self._required(self._consoleops).get_console_output(instance)

    def get_vnc_console(self, context, instance):
        return self._required(self._consoleops).get_vnc_console(instance)

    # -- host and resources (HostOps) --------------------------------------

    def get_host_ip_addr(self):
        return self.hostops.get_host_ip_addr()

    def get_available_nodes(self, refresh=False):
        return self.hostops.get_available_nodes(refresh=refresh)

    def get_available_resource(self, nodename):
        return self.hostops.get_available_resource(nodename)

    def update_provider_tree(self, provider_tree, nodename, allocations=None):
        stats = self.hostops.host_stats()
        ratios = self._get_allocation_ratios(provider_tree.data(nodename).inventory)
        inventory = {
            orc.VCPU: {
                "total": stats.vcpus,
                "min_unit": 1,
                "max_unit": stats.vcpus,
                "step_size": 1,
                "allocation_ratio": ratios[orc.VCPU],
                "reserved": CONF.reserved_host_cpus,
            },
            orc.MEMORY_MB: {
                "total": stats.memory_mb,
                "min_unit": 1,
                "max_unit": stats.memory_mb,
                "step_size": 1,
                "allocation_ratio": ratios[orc.MEMORY_MB],
                # dom0's memory is never available to guests.
                "reserved": CONF.reserved_host_memory_mb + stats.dom0_memory_mb,
            },
        }
        if stats.disk_gb > 0:
            inventory[orc.DISK_GB] = {
                "total": stats.disk_gb,
                "min_unit": 1,
                "max_unit": stats.disk_gb,
                "step_size": 1,
                "allocation_ratio": ratios[orc.DISK_GB],
                "reserved": self._get_reserved_host_disk_gb_from_config(),
            }
        provider_tree.update_inventory(nodename, inventory)

        traits = set(provider_tree.data(nodename).traits)
        for trait, supported in self.capabilities_as_traits().items():
            if supported:
                traits.add(trait)
            else:
                traits.discard(trait)
        provider_tree.update_traits(nodename, traits)

    def get_host_uptime(self):
        return self.hostops.get_host_uptime()

    def get_host_cpu_stats(self):
        return self.hostops.get_host_cpu_stats()

    def set_host_enabled(self, enabled):
        return self.hostops.set_host_enabled(enabled)

    def host_power_action(self, action):
        return self.hostops.host_power_action(action)

    def host_maintenance_mode(self, host, mode):
        # Nova live-migrates the instances, so its records and allocations follow the VMs.
        self._required(self._session)
        return pool.host_maintenance_mode(nova.context.get_admin_context(), self._session, host, mode)
