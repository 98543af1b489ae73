"""The objects a freshly installed XenServer pool has.

Why: clients look for the pool record, its master, the management
network and PIF, the control domain, host metrics and CPUs, the local EXT
SR with its PBD, an ISO library and the storage-manager (SM) records.  They
are created here with realistic values (XenServer 8 / XCP-ng 8.3).
"""

from __future__ import annotations

import logging
import shutil
import uuid as _uuid
from typing import TYPE_CHECKING

from . import registry
from .schema import NULL_REF
from .wire import now

if TYPE_CHECKING:  # pragma: no cover
    from .world import SimHost, SimPool

LOG = logging.getLogger(__name__)

GiB = 1024**3
PRODUCT_VERSION = "8.4.0"
PLATFORM_VERSION = "3.4.0"
API_VERSION = (2, 21)
DOM0_MEMORY = 4 * GiB
LOCAL_SR_SIZE = 1024 * GiB
XEN_VERSION = "4.17.5"

SM_TYPES = {
    "ext": ("Local EXT3 VHD", "user", ["SR_PROBE", "SR_UPDATE", "VDI_CREATE", "VDI_DELETE", "VDI_ATTACH",
            "VDI_DETACH", "VDI_UPDATE", "VDI_CLONE", "VDI_SNAPSHOT", "VDI_RESIZE", "VDI_GENERATE_CONFIG",
            "VDI_RESET_ON_BOOT/2", "ATOMIC_PAUSE", "VDI_CONFIG_CBT", "VDI_ACTIVATE", "VDI_DEACTIVATE",
            "THIN_PROVISIONING", "VDI_READ_CACHING"]),
    "nfs": ("NFS VHD", "user", ["SR_PROBE", "SR_UPDATE", "SR_CACHING", "VDI_CREATE", "VDI_DELETE",
            "VDI_ATTACH", "VDI_DETACH", "VDI_UPDATE", "VDI_CLONE", "VDI_SNAPSHOT", "VDI_RESIZE",
            "VDI_GENERATE_CONFIG", "VDI_MIRROR", "VDI_RESET_ON_BOOT/2", "ATOMIC_PAUSE", "VDI_CONFIG_CBT",
            "VDI_ACTIVATE", "VDI_DEACTIVATE", "THIN_PROVISIONING", "VDI_READ_CACHING"]),
    "iso": ("ISO", "iso", ["VDI_CREATE", "VDI_DELETE", "VDI_ATTACH", "VDI_DETACH", "SR_SCAN", "SR_ATTACH",
            "SR_DETACH"]),
    "lvmoiscsi": ("LVHD over iSCSI", "user", ["SR_PROBE", "SR_UPDATE", "SR_METADATA", "SR_TRIM",
                  "VDI_CREATE", "VDI_DELETE", "VDI_ATTACH", "VDI_DETACH", "VDI_GENERATE_CONFIG", "VDI_CLONE",
                  "VDI_SNAPSHOT", "VDI_RESIZE", "ATOMIC_PAUSE", "VDI_RESET_ON_BOOT/2", "VDI_UPDATE",
                  "VDI_MIRROR", "VDI_CONFIG_CBT", "VDI_ACTIVATE", "VDI_DEACTIVATE"]),
    "iscsi": ("iSCSI", "user", ["SR_PROBE", "VDI_ATTACH", "VDI_DETACH", "VDI_INTRODUCE"]),
    "udev": ("Local Device Passthrough", "disk", ["VDI_ATTACH", "VDI_DETACH", "VDI_INTRODUCE"]),
}  # fmt: skip


def populate_pool(pool: SimPool) -> None:
    """Pool-wide objects that exist before any host: pool record, SMs, network."""
    db = pool.db
    pool.shared_sr_root.mkdir(parents=True, exist_ok=True)
    if not getattr(pool, "_uuids", None):
        pool._uuids = {
            "pool": str(_uuid.uuid4()),
            "iso_sr": str(_uuid.uuid4()),
            "network": str(_uuid.uuid4()),
        }
    pool.ref = db.create("pool", uuid=pool._uuids["pool"], name_label="", name_description="")
    for sm_type, (label, _content, caps) in SM_TYPES.items():
        db.create(
            "SM",
            name_label=label,
            name_description=f"SR plugin for {label}",
            type=sm_type,
            vendor="Citrix Systems Inc",
            copyright="(C) 2008 Citrix Systems Inc",
            version="1.0",
            required_api_version="1.0",
            capabilities=list(caps),
            features={c.split("/")[0]: int(c.split("/")[1]) if "/" in c else 1 for c in caps},
            driver_filename=f"/opt/xensource/sm/{sm_type.upper()}SR",
        )
    pool.network = db.create(
        "network",
        uuid=pool._uuids["network"],
        name_label="Pool-wide network associated with eth0",
        bridge="xenbr0",
        MTU=1500,
        managed=True,
        other_config={"automatic": "true"},
    )


def populate_host(pool: SimPool, host: SimHost) -> None:
    """A host's objects: record, metrics, CPUs, PIF, control domain, local SR, PBDs."""
    db = pool.db
    world = pool.world
    if not host.uuid:
        host.uuid = str(_uuid.uuid4())
    if not getattr(host, "local_sr_uuid", None):
        host.local_sr_uuid = str(_uuid.uuid4())
    stamp = now()
    with db.lock:
        metrics = db.create(
            "host_metrics",
            memory_total=world.host_memory,
            memory_free=world.host_memory - DOM0_MEMORY,
            live=True,
            last_updated=stamp,
        )
        software = {
            "product_version": PRODUCT_VERSION,
            "product_version_text": PRODUCT_VERSION[:3],
            "product_version_text_short": PRODUCT_VERSION[:3],
            "platform_name": "XCP",
            "platform_version": PLATFORM_VERSION,
            "product_brand": "XenServer",
            "build_number": "sim",
            "hostname": host.name,
            "date": "2025-03-19",
            "dbv": "2024.0902",
            "xapi": "25.6",
            "xapi_build": "25.6.0",
            "xen": XEN_VERSION,
            "linux": "4.19.0+1",
            "xencenter_min": "2.21",
            "xencenter_max": "2.21",
            "network_backend": "openvswitch",
        }
        host.ref = db.create(
            "host",
            uuid=host.uuid,
            name_label=host.name,
            name_description="Simulated host",
            hostname=host.name,
            address=host.address,
            API_version_major=API_VERSION[0],
            API_version_minor=API_VERSION[1],
            API_version_vendor="XenSource",
            software_version=software,
            enabled=True,
            metrics=metrics,
            memory_overhead=0,
            sched_policy="credit",
            cpu_info={
                "cpu_count": str(world.host_cpus),
                "socket_count": "1",
                "vendor": "GenuineIntel",
                "speed": "2600.000",
                "modelname": "Intel(R) Xeon(R) CPU (simulated)",
                "family": "6",
                "model": "85",
                "stepping": "7",
                "flags": "fpu de tsc msr pae mce cx8 apic sep mca cmov pat clflush mmx fxsr sse sse2 ht",
                "features": "",
            },
            capabilities=["xen-3.0-x86_64", "hvm-3.0-x86_32", "hvm-3.0-x86_32p", "hvm-3.0-x86_64"],
            iscsi_iqn=f"iqn.2025-03.org.example:{host.uuid[:8]}",
            other_config={"iscsi_iqn": f"iqn.2025-03.org.example:{host.uuid[:8]}", "agent_start_time": "0."},
            license_params={"sku_type": "xenserver-premium", "expiry": "20381231T00:00:00Z"},
            edition="xenserver-premium",
            virtual_hardware_platform_versions=[0, 1, 2],
            bios_strings={"bios-vendor": "Xen", "system-manufacturer": "Xen"},
        )
        for n in range(world.host_cpus):
            db.create(
                "host_cpu",
                host=host.ref,
                number=n,
                vendor="GenuineIntel",
                speed=2600,
                modelname="Intel(R) Xeon(R) CPU (simulated)",
                family=6,
                model=85,
                stepping="7",
                flags="fpu de tsc msr pae",
                utilisation=0.0,
            )
        pif_metrics = db.create("PIF_metrics", carrier=True, speed=1000, duplex=True, last_updated=stamp)
        db.create(
            "PIF",
            device="eth0",
            network=pool.network,
            host=host.ref,
            MAC=_mac(host.uuid),
            MTU=1500,
            VLAN=-1,
            metrics=pif_metrics,
            physical=True,
            currently_attached=True,
            ip_configuration_mode="Static",
            IP=host.address,
            netmask="255.0.0.0",
            gateway="127.0.0.1",
            DNS="127.0.0.1",
            management=True,
            managed=True,
        )
        vm_metrics = db.create(
            "VM_metrics", memory_actual=DOM0_MEMORY, VCPUs_number=4, start_time=stamp, last_updated=stamp
        )
        dom0 = db.create(
            "VM",
            name_label=f"Control domain on host: {host.name}",
            name_description="The domain which manages physical devices and manages other domains",
            is_control_domain=True,
            is_a_template=False,
            power_state="Running",
            resident_on=host.ref,
            domid=0,
            memory_static_max=DOM0_MEMORY,
            memory_static_min=DOM0_MEMORY,
            memory_dynamic_max=DOM0_MEMORY,
            memory_dynamic_min=DOM0_MEMORY,
            memory_target=DOM0_MEMORY,
            VCPUs_max=4,
            VCPUs_at_startup=4,
            metrics=vm_metrics,
            domain_type="pv",
            allowed_operations=[],
            user_version=1,
        )
        if "control_domain" in db.schema.classes["host"].fields:
            db.set("host", host.ref, "control_domain", dom0)
        db.create("console", protocol="rfb", location=f"https://{host.address}/console?ref={dom0}", VM=dom0)
    # dom0 sandbox (before the SR record: its directory must exist when clients scan it)
    try:
        from . import dom0 as dom0_mod
    except ImportError:  # the plug-in helper's module is not there yet
        dom0_mod = None
    if dom0_mod is not None and hasattr(dom0_mod, "prepare_sandbox"):
        host.sandbox = dom0_mod.prepare_sandbox(
            host.root, host_uuid=host.uuid, xapi_url=host.url, local_sr_uuid=host.local_sr_uuid
        )
    host.sr_path(host.local_sr_uuid).mkdir(parents=True, exist_ok=True)
    with db.lock:
        host.local_sr = db.create(
            "SR",
            uuid=host.local_sr_uuid,
            name_label="Local storage",
            name_description=f"Local EXT storage on {host.name}",
            type="ext",
            content_type="user",
            shared=False,
            physical_size=LOCAL_SR_SIZE,
            physical_utilisation=0,
            virtual_allocation=0,
            sm_config={"devserial": f"scsi-{host.uuid[:8]}"},
            other_config={"i18n-key": "local-storage", "i18n-original-value-name_label": "Local storage"},
            allowed_operations=["forget", "vdi_create", "vdi_destroy", "scan", "destroy", "vdi_snapshot",
                                "vdi_clone", "vdi_resize", "plug", "unplug", "update", "vdi_introduce"],
        )  # fmt: skip
        db.create(
            "PBD",
            host=host.ref,
            SR=host.local_sr,
            device_config={"device": "/dev/sda3"},
            currently_attached=True,
        )
        if pool.iso_sr:
            _iso_pbd(pool, host)
    for hook in registry.HOST_HOOKS:
        try:
            hook(pool, host)
        except Exception:  # noqa: BLE001 - one broken hook must not stop the simulator
            LOG.exception("host hook %s failed", hook)


def _iso_pbd(pool: SimPool, host: SimHost) -> None:
    location = str(pool.shared_sr_root / pool._uuids["iso_sr"])
    pool.db.create(
        "PBD",
        host=host.ref,
        SR=pool.iso_sr,
        device_config={"location": location, "legacy_mode": "true"},
        currently_attached=True,
    )


def finish_pool(pool: SimPool) -> None:
    """After the hosts exist: master, default SR, the shared ISO library, hooks."""
    db = pool.db
    master = pool.master
    assert master is not None
    with db.lock:
        iso_uuid = pool._uuids["iso_sr"]
        pool.shared_sr_dir(iso_uuid)
        pool.iso_sr = db.create(
            "SR",
            uuid=iso_uuid,
            name_label="ISO library",
            name_description="ISO images",
            type="iso",
            content_type="iso",
            shared=True,
            physical_size=0,
            sm_config={},
            other_config={"auto-scan": "true"},
            allowed_operations=["scan", "vdi_introduce", "plug", "unplug", "forget"],
        )
        for host in pool.hosts:
            _iso_pbd(pool, host)
        pool.default_sr = master.local_sr
        db.update(
            "pool",
            pool.ref,
            master=master.ref,
            default_SR=master.local_sr,
            suspend_image_SR=master.local_sr,
            crash_dump_SR=master.local_sr,
        )
    for hook in registry.POOL_HOOKS:
        try:
            hook(pool)
        except Exception:  # noqa: BLE001
            LOG.exception("pool hook %s failed", hook)


def set_host_live(pool: SimPool, host: SimHost, live: bool) -> None:
    db = pool.db
    with db.lock:
        if not db.exists("host", host.ref):
            return
        metrics = db.get("host", host.ref)["metrics"]
        if metrics != NULL_REF and db.exists("host_metrics", metrics):
            db.update("host_metrics", metrics, live=live, last_updated=now())


def boot_host(pool: SimPool, host: SimHost) -> None:
    """What a host's boot does to XAPI's view of it: the boot hooks renew per-host state."""
    for hook in registry.BOOT_HOOKS:
        try:
            hook(pool, host)
        except Exception:  # noqa: BLE001
            LOG.exception("boot hook %s failed", hook)


def reset_pool(pool: SimPool) -> None:
    """Wipe the pool's state and rebuild it with the same hosts, UUIDs and URLs."""
    from . import sessions

    with pool.lock:
        for hook in registry.RESET_HOOKS:
            try:
                hook(pool)
            except Exception:  # noqa: BLE001
                LOG.exception("reset hook %s failed", hook)
        sessions.invalidate_all(pool)
        pool.db.clear()
        pool.iso_sr = ""
        for host in pool.hosts:
            mount = host.root / "var" / "run" / "sr-mount"
            if mount.exists():
                for entry in mount.iterdir():
                    if entry.is_symlink():
                        entry.unlink()
                    elif entry.is_dir():
                        _empty_dir(entry)
        if pool.shared_sr_root.exists():
            shutil.rmtree(pool.shared_sr_root)
        populate_pool(pool)
        for host in pool.hosts:
            host.going_down = ""
            host.shut_down_cleanly = False
            if not host.powered:
                host.start_server()
            populate_host(pool, host)
        finish_pool(pool)


def _empty_dir(path) -> None:
    for entry in path.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _mac(seed: str) -> str:
    digits = seed.replace("-", "")[:10]
    return "02:" + ":".join(digits[i : i + 2] for i in range(0, 10, 2))
