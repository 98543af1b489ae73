"""Live migration: XenMotion within a pool, Storage XenMotion between pools.

Nova 34's live-migration method family, as :class:`LiveMigrationOps`
methods the driver delegates to (same names and arguments, minus nothing).

* Within a pool (source and destination hosts share the pool, and so its
  shared SR): ``VM.pool_migrate`` with ``live=true``; no disk is copied.
* Between pools (no shared storage): Storage XenMotion. The destination
  compute calls ``host.migrate_receive`` and reports the result; the source
  checks with ``VM.assert_can_migrate`` and then runs ``VM.migrate_send``
  with a map for every VDI (to the destination's instance SR) and every VIF
  (to the destination network with the same bridge, else its management
  network).

Migrate data: Nova 34 has no XenAPI migrate-data class and a stock
nova-conductor never imports this package, so what travels between the
computes is Nova's own ``LibvirtLiveMigrateData`` (the class Nova's fake
driver uses too), with only fields whose Nova-side handling is harmless:

``is_shared_instance_path = True``
    Nova keeps no instance directory for this driver; with no mdev, NUMA or
    vTPM fields set, Nova's ``_live_migration_cleanup_flags`` then asks for
    no ``cleanup()`` at the source (XAPI itself moves or removes the source
    VM; a cleanup there would destroy the migrated VM, which in a pool is
    the same VM).
``is_shared_block_storage``
    True when both hosts are in one pool.
``target_connect_addr``
    The destination host's XAPI address.
``filename``
    JSON with the destination's XAPI facts (host and pool UUIDs, instance
    SR, networks by bridge and, for Storage XenMotion, the
    ``migrate_receive`` map with its session id replaced by a placeholder).
    Libvirt's meaning of this field (a temporary file for its shared-storage
    test) does not apply here.
``vtpm_secret_value``
    ``secret=<the migrate_receive session id>``, in the only sensitive field
    Nova offers; in that form oslo's masking hides it when Nova logs migrate
    data at debug level (a bare value would be shown). Its partner
    ``vtpm_secret_uuid`` stays unset, so Nova sees no vTPM.

``block_migration`` is deliberately left unset: Nova's manager would then
ask for ``get_instance_disk_info``, which means nothing for XAPI.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from typing import Any

from nova.objects import migrate_data as migrate_data_obj

from nova import exception as nova_exception
from xenapi_driver import exception, vm_utils

LOG = logging.getLogger(__name__)

#: Stands for the migrate_receive session id inside the JSON in ``filename``.
SESSION_PLACEHOLDER = "@@XENAPI_MIGRATION_SESSION@@"
#: Prefix of the session id in ``vtpm_secret_value``: oslo's masking hides ``secret=...``
#: when Nova logs the migrate data.
SECRET_PREFIX = "secret="
#: How long a live migration task may run before it is cancelled (seconds).
DEFAULT_MIGRATION_TIMEOUT = 3600.0


def _pre_check_error(reason: str) -> Exception:
    return nova_exception.MigrationPreCheckError(reason=reason)


class XenAPIMigrateData:
    """Read and write our facts in a ``LibvirtLiveMigrateData`` (see the module docstring)."""

    @staticmethod
    def build(facts: dict[str, Any], *, same_pool: bool, address: str, secret: str | None) -> Any:
        data = migrate_data_obj.LibvirtLiveMigrateData()
        data.is_shared_instance_path = True
        data.is_shared_block_storage = same_pool
        data.target_connect_addr = address
        data.filename = json.dumps(facts, sort_keys=True)
        if secret:
            # SensitiveStringField masks only "key=value" forms it recognises.
            data.vtpm_secret_value = SECRET_PREFIX + secret
        return data

    @staticmethod
    def facts(data: Any) -> dict[str, Any]:
        if data is None or not data.obj_attr_is_set("filename") or not data.filename:
            raise _pre_check_error("the live-migration data carries no XenAPI destination facts")
        try:
            facts = json.loads(data.filename)
        except ValueError:
            raise _pre_check_error("the live-migration data's XenAPI facts are not JSON") from None
        if not isinstance(facts, dict) or "host_uuid" not in facts:
            raise _pre_check_error("the live-migration data's XenAPI facts name no destination host")
        return facts

    @staticmethod
    def receive_map(data: Any) -> dict[str, str] | None:
        """The ``migrate_receive`` map with its session id put back, or None within a pool."""
        facts = XenAPIMigrateData.facts(data)
        dest = facts.get("receive")
        if not dest:
            return None
        secret = data.vtpm_secret_value if data.obj_attr_is_set("vtpm_secret_value") else None
        if secret and secret.startswith(SECRET_PREFIX):
            secret = secret[len(SECRET_PREFIX) :]
        if not secret:
            raise _pre_check_error("the Storage XenMotion session is missing from the migrate data")
        return {k: str(v).replace(SESSION_PLACEHOLDER, secret) for k, v in dest.items()}


class LiveMigrationOps:
    """Nova 34's live-migration methods for one compute (source or destination)."""

    def __init__(
        self, session: Any, hostops: Any = None, *, timeout: float = DEFAULT_MIGRATION_TIMEOUT
    ) -> None:
        self._session = session
        self._hostops = hostops
        self._timeout = timeout
        self._tasks: dict[str, str] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------ helpers

    def _instance_sr(self) -> str | None:
        if self._hostops is None:
            from xenapi_driver import hostops

            self._hostops = hostops.HostOps(self._session)
        return self._hostops.instance_sr()

    def _pool_uuid(self) -> str:
        pools = self._session.call_xenapi("pool.get_all_records")
        return next(iter(pools.values()))["uuid"]

    def _find_vm(self, instance: Any) -> tuple[str, dict[str, Any]]:
        found = vm_utils.find_instance_vm(self._session, instance)
        if found is None:
            raise nova_exception.InstanceNotFound(instance_id=instance.uuid)
        return found

    def _networks_by_bridge(self) -> dict[str, str]:
        return {
            rec["bridge"]: ref
            for ref, rec in self._session.call_xenapi("network.get_all_records").items()
            if rec.get("bridge")
        }

    def _management_network(self) -> str:
        expr = f'field "host" = "{vm_utils.quote(self._session.host_ref)}" and field "management" = "true"'
        pifs = self._session.get_all_records_where("PIF", expr)
        for rec in pifs.values():
            return rec["network"]
        return vm_utils.NULL_REF

    # ------------------------------------------------------------ checks

    def check_can_live_migrate_destination(
        self,
        context,
        instance,
        src_compute_info,
        dst_compute_info,
        block_migration=False,
        disk_over_commit=False,
    ):
        """On the destination: describe this host; prepare Storage XenMotion unless the pools match.

        The source's pool is not known here, so ``host.migrate_receive`` is
        prepared whenever block migration is allowed (True or Nova's
        ``auto``, passed as None); the source drops it when both hosts are in
        one pool.
        """
        host = self._session.call_xenapi("host.get_record", self._session.host_ref)
        if not host.get("enabled"):
            raise _pre_check_error(f"XenServer host {host.get('address')} is disabled (maintenance?)")
        facts: dict[str, Any] = {
            "host_uuid": self._session.host_uuid,
            "pool_uuid": self._pool_uuid(),
            "address": self._session.host_address,
            "sr": self._instance_sr(),
            "networks": self._networks_by_bridge(),
            "default_network": self._management_network(),
        }
        secret = None
        if block_migration is not False:
            dest = self._session.call_xenapi(
                "host.migrate_receive", self._session.host_ref, facts["default_network"], {}
            )
            secret = str(dest.get("session_id", ""))
            facts["receive"] = {
                k: str(v).replace(secret, SESSION_PLACEHOLDER) if secret else str(v) for k, v in dest.items()
            }
        return XenAPIMigrateData.build(
            facts, same_pool=False, address=self._session.host_address, secret=secret
        )

    def cleanup_live_migration_destination_check(self, context, dest_check_data):
        """Nothing to undo: the migration session is needed until the migration ends."""

    def check_can_live_migrate_source(self, context, instance, dest_check_data, block_device_info=None):
        """On the source: choose pool migration or Storage XenMotion and let XAPI check it."""
        facts = XenAPIMigrateData.facts(dest_check_data)
        vm_ref, vm = self._find_vm(instance)
        same_pool = facts.get("pool_uuid") == self._pool_uuid()
        dest_check_data.is_shared_block_storage = same_pool
        try:
            if same_pool:
                dest_host = self._session.call_xenapi("host.get_by_uuid", facts["host_uuid"])
                if dest_host == vm.get("resident_on"):
                    raise _pre_check_error("the instance already runs on the destination host")
                self._session.call_xenapi("VM.assert_can_boot_here", vm_ref, dest_host)
                # Not Storage XenMotion: end the prepared session and forget it.
                if facts.pop("receive", None) is not None:
                    _end_receive_session(dest_check_data)
                    dest_check_data.vtpm_secret_value = None
                dest_check_data.filename = json.dumps(facts, sort_keys=True)
            else:
                dest = XenAPIMigrateData.receive_map(dest_check_data)
                if dest is None:
                    raise _pre_check_error(
                        "the destination is in another XenServer pool, which needs block migration "
                        "(Storage XenMotion); retry with --block-migration or block_migration=auto"
                    )
                vdi_map, vif_map = self._maps(vm_ref, facts)
                self._session.call_xenapi("VM.assert_can_migrate", vm_ref, dest, True, vdi_map, vif_map, {})
        except exception.XenAPIError as exc:
            raise _pre_check_error(
                f"XAPI refuses to migrate {instance.name} to {facts.get('address')}: {exc}"
            ) from None
        return dest_check_data

    def _maps(self, vm_ref: str, facts: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
        """A destination for every VDI (the destination's instance SR) and every VIF."""
        sr = facts.get("sr")
        if not sr:
            raise _pre_check_error("the destination host has no SR for instance disks")
        vdi_map: dict[str, str] = {}
        vbds = self._session.call_xenapi("VM.get_VBDs", vm_ref)
        for vbd in vbds:
            rec = self._session.get_rec("VBD", vbd)
            if rec is None or rec.get("empty") or rec.get("type") == "CD":
                continue
            if rec.get("VDI") and rec["VDI"] != vm_utils.NULL_REF:
                vdi_map[rec["VDI"]] = sr
        networks = facts.get("networks") or {}
        default = facts.get("default_network") or vm_utils.NULL_REF
        vif_map: dict[str, str] = {}
        for vif in self._session.call_xenapi("VM.get_VIFs", vm_ref):
            network = self._session.call_xenapi("VIF.get_network", vif)
            bridge = self._session.call_xenapi("network.get_bridge", network)
            vif_map[vif] = networks.get(bridge, default)
        return vdi_map, vif_map

    # ------------------------------------------------------------ the migration

    def pre_live_migration(self, context, instance, block_device_info, network_info, disk_info, migrate_data):
        """On the destination: XAPI creates the domain itself; nothing to prepare."""
        return migrate_data

    def live_migration(
        self, context, instance, dest, post_method, recover_method, block_migration=False, migrate_data=None
    ):
        """On the source: migrate; then Nova's post method, or its recover method if XAPI refused."""
        try:
            self._migrate(instance, migrate_data)
        except Exception as exc:
            LOG.error("Live migration of %s to %s failed: %s", instance.uuid, dest, exc)
            if self._still_here(instance):
                recover_method(context, instance, dest, migrate_data)
                return
            raise
        post_method(context, instance, dest, block_migration, migrate_data)

    def _still_here(self, instance: Any) -> bool:
        try:
            _ref, rec = self._find_vm(instance)
        except (nova_exception.InstanceNotFound, exception.XenAPIError):
            return False
        return vm_utils.belongs_to_host(rec, self._session.host_ref)

    def _migrate(self, instance: Any, migrate_data: Any) -> None:
        facts = XenAPIMigrateData.facts(migrate_data)
        vm_ref, _vm = self._find_vm(instance)
        if facts.get("pool_uuid") == self._pool_uuid():
            dest_host = self._session.call_xenapi("host.get_by_uuid", facts["host_uuid"])
            LOG.info("Live-migrating %s within the pool to %s", instance.uuid, facts.get("address"))
            self._run(instance, "VM.pool_migrate", vm_ref, dest_host, {"live": "true"})
            return
        dest = XenAPIMigrateData.receive_map(migrate_data)
        if dest is None:
            raise _pre_check_error("Storage XenMotion was not prepared by the destination")
        vdi_map, vif_map = self._maps(vm_ref, facts)
        LOG.info(
            "Live-migrating %s with Storage XenMotion to %s (%d disks)",
            instance.uuid,
            facts.get("address"),
            len(vdi_map),
        )
        self._run(instance, "VM.migrate_send", vm_ref, dest, True, vdi_map, vif_map, {})

    def _run(self, instance: Any, method: str, *args: Any) -> Any:
        """Run ``Async.method`` remembering its task, so live_migration_abort can cancel it."""
        task = self._session.call_xenapi(f"Async.{method}", *args)
        with self._lock:
            self._tasks[instance.uuid] = task
        try:
            return self._wait(task, method)
        finally:
            with self._lock:
                self._tasks.pop(instance.uuid, None)

    def _wait(self, task: str, method: str) -> Any:
        import time

        deadline = time.monotonic() + self._timeout
        interval = 0.05
        while True:
            status = self._session.call_xenapi("task.get_status", task)
            if status not in ("pending", "cancelling"):
                break
            if time.monotonic() >= deadline:
                with contextlib.suppress(exception.XenAPIError):
                    self._session.call_xenapi("task.cancel", task)
                raise exception.XenAPITaskTimeout(
                    "TASK_TIMEOUT", [task, method, f"{self._timeout:g}"], method=method
                )
            time.sleep(interval)
            interval = min(interval * 2, 1.0)
        rec = self._session.call_xenapi("task.get_record", task)
        with contextlib.suppress(exception.XenAPIError):
            self._session.call_xenapi("task.destroy", task)
        if status == "success":
            return rec.get("result")
        info = [str(x) for x in (rec.get("error_info") or [])] or ["TASK_FAILED", task, status]
        raise exception.XenAPIError(info[0], info[1:], method=f"Async.{method}")

    def live_migration_abort(self, instance):
        """Cancel the running migration task; XAPI rolls the VM back to the source."""
        with self._lock:
            task = self._tasks.get(instance.uuid)
        if task is None:
            # Finished (or not started) already: Nova's own state decides what happens next.
            LOG.info("No XAPI migration task of %s runs on this host; nothing to abort", instance.uuid)
            return
        LOG.info("Aborting the live migration of %s (cancelling XAPI task %s)", instance.uuid, task)
        self._session.call_xenapi("task.cancel", task)

    def live_migration_force_complete(self, instance):
        """XAPI converges memory copies itself and offers no post-copy or pause-to-finish switch."""
        raise NotImplementedError()

    def post_live_migration(self, context, instance, block_device_info, migrate_data=None):
        """On the source, after success: XAPI already moved or removed the source VM; end the
        Storage XenMotion session."""
        _end_receive_session(migrate_data)

    def post_live_migration_at_source(self, context, instance, network_info):
        """On the source: nothing to unplug; the VIFs left with the VM (or with its record)."""

    def post_live_migration_at_destination(
        self, context, instance, network_info, block_migration=False, block_device_info=None
    ):
        """On the destination: the VM is assigned to this host (affinity), as spawn does."""
        vm_ref, _vm = self._find_vm(instance)
        self._session.call_xenapi("VM.set_affinity", vm_ref, self._session.host_ref)

    def rollback_live_migration_at_destination(
        self, context, instance, network_info, block_device_info, destroy_disks=True, migrate_data=None
    ):
        """On the destination after a failure: XAPI cleaned its copies; end the migration session."""
        _end_receive_session(migrate_data)


def _end_receive_session(migrate_data: Any) -> None:
    """Best effort: log out the ``migrate_receive`` session (a credential) at the destination's master."""
    from xenapi_driver import conf as xconf
    from xenapi_driver.pool import remote_session

    try:
        dest = XenAPIMigrateData.receive_map(migrate_data) if migrate_data is not None else None
    except nova_exception.MigrationPreCheckError:
        return
    if not dest or not dest.get("session_id") or not dest.get("master"):
        return
    master = dest["master"]
    if "://" not in master:
        return
    sdk = remote_session(master.rstrip("/") + "/", xconf.CONF)
    try:
        # The raw XML-RPC call: the SDK's own logout only ends sessions it logged in.
        answer = getattr(sdk, "session.logout")(dest["session_id"])
    except Exception as exc:  # noqa: BLE001 - best effort; XAPI expires sessions anyway
        LOG.debug("Logging out the migration session at %s failed: %s", master, exc.__class__.__name__)
        return
    if isinstance(answer, dict) and answer.get("Status") != "Success":
        LOG.debug("The migration session at %s was already gone: %s", master, answer.get("ErrorDescription"))
