"""The managed XenServer host: resources, placement inventory and host actions.

Everything here reads XAPI records in bulk, a fixed number of calls per
update, so the cost of Nova's periodic resource update does not grow with the
number of VMs on the host: host capacity comes from the host and host_metrics
records, the control domain's memory from its one VM record, and disk from the
one SR instances are created on. Per-instance usage is Nova's to count (its
resource tracker recomputes it from the instances it tracks). Operations not
implemented yet raise ``NotImplementedError``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

from nova.objects import fields as obj_fields
from oslo_utils import versionutils

from xenapi_driver import conf as xconf
from xenapi_driver import vm_utils

LOG = logging.getLogger(__name__)

MiB = 1024 * 1024
GiB = 1024 * MiB

# XAPI host capability strings ("<kind>-<version>-<arch>") -> (arch, mode).
_CAPABILITY_ARCH = {
    "x86_64": obj_fields.Architecture.X86_64,
    "x86_32": obj_fields.Architecture.I686,
    "x86_32p": obj_fields.Architecture.I686,  # PAE
}
_CAPABILITY_MODE = {"xen": obj_fields.VMMode.XEN, "hvm": obj_fields.VMMode.HVM}


@dataclasses.dataclass(frozen=True)
class HostStats:
    """A snapshot of the managed host's capacity, from a fixed number of XAPI calls."""

    nodename: str
    vcpus: int
    memory_mb: int
    memory_free_mb: int
    dom0_memory_mb: int
    disk_gb: int
    disk_used_gb: int
    hypervisor_version: int
    cpu_info: dict[str, Any]
    supported_instances: list[tuple[str, str, str]]
    sr_ref: str | None


def supported_instances(capabilities: list[str]) -> list[tuple[str, str, str]]:
    """Nova's (arch, hypervisor type, VM mode) triples for XAPI's host capabilities."""
    found: list[tuple[str, str, str]] = []
    for capability in capabilities:
        kind, _, rest = capability.partition("-")
        arch = _CAPABILITY_ARCH.get(rest.partition("-")[2])
        mode = _CAPABILITY_MODE.get(kind)
        if arch and mode:
            triple = (arch, obj_fields.HVType.XEN, mode)
            if triple not in found:
                found.append(triple)
    return found


def _version_int(software_version: dict[str, str]) -> int:
    for key in ("product_version", "platform_version"):
        value = software_version.get(key)
        if value:
            try:
                return versionutils.convert_version_to_int(value)
            except Exception:  # noqa: BLE001 - a vendor's odd version string is not fatal
                LOG.warning("Unparsable XenServer %s %r", key, value)
    return 0


def _cpu_info(host_rec: dict[str, Any], vcpus: int) -> dict[str, Any]:
    info = host_rec.get("cpu_info") or {}
    sockets = max(1, int(info.get("socket_count") or 1))
    return {
        "arch": obj_fields.Architecture.X86_64,
        "model": info.get("modelname", ""),
        "vendor": info.get("vendor", ""),
        "topology": {"sockets": sockets, "cores": max(1, vcpus // sockets), "threads": 1},
        "features": sorted(set(str(info.get("flags", "")).split())),
    }


class HostOps:
    """Host-level operations for the one host a nova-compute manages."""

    def __init__(self, session: Any) -> None:
        self._session = session
        self._nodename: str | None = None
        self._warned_sr: str | None = None
        self._sr_ref: str | None = None

    # -- start-up ---------------------------------------------------------

    def init_host(self, host: str) -> None:
        """Read the managed host once: proves the session works and fixes the node name."""
        record = self._session.call_xenapi("host.get_record", self._session.host_ref)
        self._nodename = record.get("hostname") or record["name_label"]
        LOG.info(
            "nova-compute %s manages XenServer host %s (%s, %s)",
            host,
            self._nodename,
            self._session.host_address,
            self._session.host_uuid,
        )

    # -- identity ---------------------------------------------------------

    def get_host_ip_addr(self) -> str:
        return self._session.host_address

    def nodename(self) -> str:
        if self._nodename is None:
            record = self._session.call_xenapi("host.get_record", self._session.host_ref)
            self._nodename = record.get("hostname") or record["name_label"]
        return self._nodename

    def get_available_nodes(self, refresh: bool = False) -> list[str]:
        return [self.nodename()]

    # -- capacity ---------------------------------------------------------

    def _choose_sr(self) -> tuple[str, dict[str, Any]] | None:
        """The SR instances' disks go to, per ``[xenserver] sr_matching_filter``.

        ``default-sr:true`` picks the pool's default SR; ``other-config:KEY=VALUE``
        the SR whose other_config has that entry. One or two calls, independent
        of the number of VMs.
        """
        wanted = xconf.CONF.xenserver.sr_matching_filter
        kind, _, value = wanted.partition(":")
        if kind == "default-sr" and value.lower() == "true":
            pools = self._session.call_xenapi("pool.get_all_records")
            for pool in pools.values():
                sr_ref = pool.get("default_SR") or vm_utils.NULL_REF
                if sr_ref != vm_utils.NULL_REF:
                    record = self._session.get_rec("SR", sr_ref)
                    if record is not None:
                        return self._usable_here(sr_ref, record, wanted)
            LOG.warning("The pool has no default SR ([xenserver] sr_matching_filter = %s)", wanted)
            return None
        if kind == "other-config" and "=" in value:
            key, _, expected = value.partition("=")
            for sr_ref, record in self._session.call_xenapi("SR.get_all_records").items():
                if (record.get("other_config") or {}).get(key) == expected:
                    return self._usable_here(sr_ref, record, wanted)
            LOG.warning("No SR matches [xenserver] sr_matching_filter = %s", wanted)
            return None
        LOG.warning(
            "[xenserver] sr_matching_filter %r is neither 'default-sr:true' nor "
            "'other-config:KEY=VALUE': reporting no disk capacity",
            wanted,
        )
        return None

    def _usable_here(
        self, sr_ref: str, record: dict[str, Any], wanted: str
    ) -> tuple[str, dict[str, Any]] | None:
        """The SR, if the managed host can reach it (shared, or plugged here)."""
        if record.get("shared"):
            return sr_ref, record
        expr = (
            f'field "SR" = "{vm_utils.quote(sr_ref)}" and '
            f'field "host" = "{vm_utils.quote(self._session.host_ref)}" and '
            'field "currently_attached" = "true"'
        )
        if self._session.get_all_records_where("PBD", expr):
            return sr_ref, record
        if self._warned_sr != sr_ref:
            self._warned_sr = sr_ref
            LOG.warning(
                "SR %s (%s) chosen by [xenserver] sr_matching_filter = %s is local to another "
                "host: instances on %s cannot use it, so no disk capacity is reported. Choose "
                "a shared SR or one of this host's SRs.",
                record.get("name_label"),
                record.get("uuid"),
                wanted,
                self._session.host_address,
            )
        return None

    def instance_sr(self) -> str | None:
        """The SR new instance disks go to (chosen once, then remembered)."""
        if self._sr_ref is None:
            chosen = self._choose_sr()
            self._sr_ref = chosen[0] if chosen else None
        return self._sr_ref

    def _dom0_memory(self, host_rec: dict[str, Any]) -> int:
        dom0 = host_rec.get("control_domain") or vm_utils.NULL_REF
        if dom0 != vm_utils.NULL_REF:
            record = self._session.get_rec("VM", dom0)
            if record is not None:
                return int(record.get("memory_target") or record.get("memory_static_max") or 0)
        expr = (
            'field "is_control_domain" = "true" and '
            f'field "resident_on" = "{vm_utils.quote(self._session.host_ref)}"'
        )
        records = self._session.get_all_records_where("VM", expr)
        return sum(int(r.get("memory_target") or r.get("memory_static_max") or 0) for r in records.values())

    def host_stats(self) -> HostStats:
        """Capacity of the managed host and its SR (at most six XAPI calls)."""
        host_rec = self._session.call_xenapi("host.get_record", self._session.host_ref)
        metrics = self._session.call_xenapi("host_metrics.get_record", host_rec["metrics"])
        vcpus = int((host_rec.get("cpu_info") or {}).get("cpu_count") or 0)
        memory_total = int(metrics.get("memory_total") or 0)
        memory_free = int(metrics.get("memory_free") or 0)
        dom0_memory = self._dom0_memory(host_rec)
        chosen = self._choose_sr()
        if chosen is None:
            sr_ref, disk_gb, disk_used_gb = None, 0, 0
        else:
            sr_ref, sr_rec = chosen
            disk_gb = int(sr_rec.get("physical_size") or 0) // GiB
            disk_used_gb = -(-int(sr_rec.get("physical_utilisation") or 0) // GiB)
        self._nodename = host_rec.get("hostname") or host_rec["name_label"]
        self._sr_ref = sr_ref  # the periodic update keeps spawn's choice current
        return HostStats(
            nodename=self._nodename,
            vcpus=vcpus,
            memory_mb=memory_total // MiB,
            memory_free_mb=memory_free // MiB,
            dom0_memory_mb=-(-dom0_memory // MiB),
            disk_gb=disk_gb,
            disk_used_gb=disk_used_gb,
            hypervisor_version=_version_int(host_rec.get("software_version") or {}),
            cpu_info=_cpu_info(host_rec, vcpus),
            supported_instances=supported_instances(host_rec.get("capabilities") or []),
            sr_ref=sr_ref,
        )

    def get_available_resource(self, nodename: str) -> dict[str, Any]:
        stats = self.host_stats()
        return {
            "vcpus": stats.vcpus,
            "memory_mb": stats.memory_mb,
            "local_gb": stats.disk_gb,
            # Nova's resource tracker recounts guest usage from its instances;
            # what XAPI says is in use covers dom0 and VMs Nova does not own.
            "vcpus_used": 0,
            "memory_mb_used": stats.memory_mb - stats.memory_free_mb,
            "local_gb_used": stats.disk_used_gb,
            "hypervisor_type": obj_fields.HVType.XEN,
            "hypervisor_version": stats.hypervisor_version,
            "hypervisor_hostname": stats.nodename,
            "cpu_info": json.dumps(stats.cpu_info),
            "disk_available_least": stats.disk_gb - stats.disk_used_gb,
            "supported_instances": stats.supported_instances,
            "numa_topology": None,
        }

    # -- host actions ---------------------------------------------------------

    def get_host_uptime(self) -> str:
        """dom0's uptime(1)-style line, from the xenhost plug-in (XAPI has no uptime call)."""
        result = self._session.call_plugin_serialized("xenhost", "host_uptime")
        return str(result["uptime"])

    def get_host_cpu_stats(self) -> dict[str, Any]:
        # Nova's CPU monitor needs cumulative kernel/user/idle/iowait times;
        # XAPI only reports per-CPU utilisation, so this cannot be faithful.
        raise NotImplementedError()

    def set_host_enabled(self, enabled: bool) -> str:
        """Let XAPI place VMs on the managed host again, or stop it doing so."""
        host_ref = self._session.host_ref
        self._session.call_xenapi("host.enable" if enabled else "host.disable", host_ref)
        return "enabled" if enabled else "disabled"

    def host_power_action(self, action: str) -> str:
        """Reboot or shut down the managed host (XAPI requires it disabled and without running VMs)."""
        if action not in ("reboot", "shutdown"):
            # A host that is off cannot be asked to start itself.
            raise NotImplementedError()
        host_ref = self._session.host_ref
        self._session.call_xenapi("host.disable", host_ref)
        try:
            self._session.call_xenapi(f"host.{action}", host_ref)
        except Exception:
            # Leave the host usable as it was when XAPI refuses (e.g. running VMs).
            try:
                self._session.call_xenapi("host.enable", host_ref)
            except Exception:  # noqa: BLE001
                LOG.exception(
                    "Could not re-enable host %s after a failed %s", self._session.host_address, action
                )
            raise
        return action
