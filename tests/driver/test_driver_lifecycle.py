"""Instance lifecycle through XenAPIDriver against the simulator, checked on XAPI's side."""

from __future__ import annotations

import contextlib
import uuid
from typing import Any

import nova.conf
import pytest
from driver_helpers import BlankImageSource, GiB, make_instance, xapi_calls
from nova.compute import power_state
from nova.network import model as network_model

from nova import exception as nova_exception
from nova import objects
from nova.virt import fake
from xenapi_driver import vmops
from xenapi_driver.driver import XenAPIDriver
from xenapi_driver.exception import XenAPIError

CONF = nova.conf.CONF

MiB = 1024 * 1024


@pytest.fixture
def drv(driver: XenAPIDriver, sim: Any, managed_host: Any) -> Any:
    # The pool's default SR is the master's local disk; the managed member
    # keeps instances on its own local SR, chosen as an operator would.
    sim.pools[0].db.update("SR", managed_host.local_sr, other_config={"nova": "instances"})
    CONF.set_override("sr_matching_filter", "other-config:nova=instances", group="xenserver")
    driver.vmops.image_source = BlankImageSource(driver._session)
    yield driver
    CONF.clear_override("sr_matching_filter", group="xenserver")


def flavored_instance(**flavor: int) -> objects.Instance:
    values = {"memory_mb": 512, "vcpus": 2, "root_gb": 2, "ephemeral_gb": 1, "swap": 256}
    values.update(flavor)
    inst = make_instance(
        memory_mb=values["memory_mb"],
        vcpus=values["vcpus"],
        root_gb=values["root_gb"],
        ephemeral_gb=values["ephemeral_gb"],
        hostname="web-1",
        metadata={"role": "web"},
        os_type="linux",
    )
    inst.flavor = objects.Flavor(
        flavorid="f1", name="f1", extra_specs={}, rxtx_factor=1.0, vcpu_weight=0, **values
    )
    return inst


def vif(active: bool = True, bridge: str = "xenbr0") -> network_model.VIF:
    subnet = network_model.Subnet(
        cidr="10.0.0.0/24",
        ips=[network_model.FixedIP(address="10.0.0.5", version=4)],
        gateway=network_model.IP(address="10.0.0.1", version=4),
        dns=[network_model.IP(address="10.0.0.2", version=4)],
    )
    network = network_model.Network(
        id=str(uuid.uuid4()), bridge=bridge, label="private", subnets=[subnet], meta={"mtu": 1450}
    )
    return network_model.VIF(
        id=str(uuid.uuid4()),
        address="fa:16:3e:00:00:%02x" % (uuid.uuid4().int % 256),
        network=network,
        active=active,
    )


def image_meta() -> objects.ImageMeta:
    return objects.ImageMeta.from_dict({"disk_format": "vhd", "container_format": "ovf", "properties": {}})


def spawn(drv: XenAPIDriver, inst: Any, network_info: Any = None) -> None:
    drv.spawn(
        None, inst, image_meta(), [], "secret", {}, network_info=network_model.NetworkInfo(network_info or [])
    )


def vm_of(sim: Any, inst: Any) -> tuple[str, dict]:
    db = sim.pools[0].db
    refs = [r for r in db.all("VM") if (db.get("VM", r)["other_config"] or {}).get("nova_uuid") == inst.uuid]
    refs = [r for r in refs if not db.get("VM", r)["other_config"].get("nova_rescue")]
    assert len(refs) == 1, refs
    return refs[0], db.get("VM", refs[0])


def leftovers(sim: Any, inst: Any, made: list[str]) -> dict[str, list[str]]:
    """Everything spawn could have created for ``inst`` that still exists."""
    db = sim.pools[0].db
    vms = [r for r in db.all("VM") if (db.get("VM", r)["other_config"] or {}).get("nova_uuid") == inst.uuid]
    vdis = [r for r in db.all("VDI") if r in made or "nova_disk" in (db.get("VDI", r)["other_config"] or {})]
    vifs = [r for r in db.all("VIF") if db.get("VIF", r)["VM"] in vms]
    return {k: v for k, v in {"VM": vms, "VDI": vdis, "VIF": vifs}.items() if v}


def test_spawn_builds_the_vm(drv: XenAPIDriver, sim: Any, managed_host: Any) -> None:
    inst = flavored_instance()
    nic = vif()
    spawn(drv, inst, [nic])
    db = sim.pools[0].db
    ref, rec = vm_of(sim, inst)
    assert rec["name_label"] == inst.name
    assert rec["power_state"] == "Running"
    assert rec["resident_on"] == managed_host.ref
    assert rec["affinity"] == managed_host.ref
    assert int(rec["memory_static_max"]) == 512 * MiB
    assert int(rec["VCPUs_max"]) == 2
    assert rec["HVM_boot_policy"] == "BIOS order"
    disks = {}
    for vbd in rec["VBDs"]:
        vbd_rec = db.get("VBD", vbd)
        disks[vbd_rec["userdevice"]] = db.get("VDI", vbd_rec["VDI"])
    assert int(disks["0"]["virtual_size"]) == 2 * GiB  # the image's 1 GiB grown to the flavor
    assert disks["0"]["other_config"]["nova_disk"] == "root"
    assert int(disks["2"]["virtual_size"]) == 256 * MiB
    assert int(disks["4"]["virtual_size"]) == 1 * GiB
    (vif_ref,) = rec["VIFs"]
    vif_rec = db.get("VIF", vif_ref)
    assert vif_rec["MAC"] == nic["address"]
    assert int(vif_rec["MTU"]) == 1450
    assert db.get("network", vif_rec["network"])["bridge"] == "xenbr0"
    data = rec["xenstore_data"]
    assert data["vm-data/hostname"] == "web-1"
    assert '"10.0.0.5"' in data["vm-data/networking/" + nic["address"].replace(":", "")]
    assert data["vm-data/user-metadata/role"] == '"web"'
    assert drv.get_info(inst).state == power_state.RUNNING
    assert inst.name in drv.list_instances()


def test_spawn_pv_when_image_asks(drv: XenAPIDriver, sim: Any) -> None:
    inst = flavored_instance(ephemeral_gb=0, swap=0)
    meta = objects.ImageMeta.from_dict({"properties": {"hw_vm_mode": "xen"}})
    drv.spawn(None, inst, meta, [], "", {}, network_info=network_model.NetworkInfo([]))
    _, rec = vm_of(sim, inst)
    assert (rec["domain_type"], rec["PV_bootloader"], rec["HVM_boot_policy"]) == ("pv", "pygrub", "")


def test_spawn_call_budget(drv: XenAPIDriver, sim: Any) -> None:
    drv.get_available_resource(drv.get_available_nodes()[0])  # the periodic update has chosen the SR
    inst = flavored_instance()
    sim.reset_call_counts()
    spawn(drv, inst, [vif()])
    counts = xapi_calls(sim)
    counts["VDI.create"] -= 1  # the image layer's disk
    assert sum(counts.values()) <= 15, counts


def test_spawn_existing_instance_refused(drv: XenAPIDriver) -> None:
    inst = flavored_instance(ephemeral_gb=0, swap=0)
    spawn(drv, inst)
    with pytest.raises(nova_exception.InstanceExists):
        spawn(drv, inst)


def test_spawn_without_image_layer_refuses_clearly(drv: XenAPIDriver, sim: Any) -> None:
    drv.vmops.image_source = vmops.NoImageSource()
    inst = flavored_instance()
    with pytest.raises(NotImplementedError, match="image layer"):
        spawn(drv, inst)
    assert leftovers(sim, inst, []) == {}


SPAWN_STEPS = [
    ("VDI.add_to_other_config", "INTERNAL_ERROR"),
    ("VDI.resize", "SR_FULL"),
    ("VM.create", "INTERNAL_ERROR"),
    ("VBD.create", "INTERNAL_ERROR"),
    ("VDI.create", "SR_FULL"),
    ("VIF.create", "INTERNAL_ERROR"),
    ("VM.start_on", "INTERNAL_ERROR"),
    ("VM.get_power_state", "INTERNAL_ERROR"),
]


@pytest.mark.parametrize(("method", "code"), SPAWN_STEPS, ids=[m for m, _ in SPAWN_STEPS])
def test_failure_at_each_spawn_step_leaves_nothing(
    drv: XenAPIDriver, sim: Any, method: str, code: str
) -> None:
    inst = flavored_instance()
    sim.faults.fail_next(method, code, "injected")
    with pytest.raises(XenAPIError) as err:
        spawn(drv, inst, [vif()])
    assert err.value.code == code
    assert leftovers(sim, inst, drv.vmops.image_source.made) == {}
    assert inst.name not in drv.list_instances()


def test_host_out_of_memory_is_a_clear_resource_failure(drv: XenAPIDriver, sim: Any) -> None:
    inst = flavored_instance()
    sim.faults.fail_next("VM.start_on", "HOST_NOT_ENOUGH_FREE_MEMORY", str(512 * MiB), "1024")
    with pytest.raises(nova_exception.ComputeResourcesUnavailable, match="1024 bytes of memory free"):
        spawn(drv, inst)
    assert leftovers(sim, inst, drv.vmops.image_source.made) == {}


def test_unknown_bridge_fails_before_creating_anything(drv: XenAPIDriver, sim: Any) -> None:
    inst = flavored_instance()
    with pytest.raises(nova_exception.NetworkNotFoundForBridge):
        spawn(drv, inst, [vif(bridge="no-such-bridge")])
    assert leftovers(sim, inst, drv.vmops.image_source.made) == {}


class RecordingVirtAPI(fake.FakeVirtAPI):
    def __init__(self) -> None:
        super().__init__()
        self.waited: list[tuple[str, str]] = []

    @contextlib.contextmanager
    def wait_for_instance_event(self, instance, event_names, timeout=300, error_callback=None):
        self.waited.extend(event_names)
        yield


def test_spawn_waits_for_neutron_vif_plugged(drv: XenAPIDriver) -> None:
    virtapi = RecordingVirtAPI()
    drv.vmops._virtapi = virtapi
    inactive, active = vif(active=False), vif(active=True)
    spawn(drv, flavored_instance(), [inactive, active])
    assert virtapi.waited == [("network-vif-plugged", inactive["id"])]


def test_destroy_is_idempotent_and_removes_disks(drv: XenAPIDriver, sim: Any) -> None:
    inst = flavored_instance()
    spawn(drv, inst, [vif()])
    drv.destroy(None, inst, None, block_device_info=None)
    assert leftovers(sim, inst, drv.vmops.image_source.made) == {}
    drv.destroy(None, inst, None)  # again: fine
    drv.destroy(None, flavored_instance(), None)  # never existed: fine


def test_destroy_keeps_disks_when_asked(drv: XenAPIDriver, sim: Any) -> None:
    inst = flavored_instance()
    spawn(drv, inst)
    drv.destroy(None, inst, None, destroy_disks=False)
    left = leftovers(sim, inst, drv.vmops.image_source.made)
    assert "VM" not in left and len(left["VDI"]) == 3


def state(drv: XenAPIDriver, inst: Any) -> int:
    return drv.get_info(inst).state


def test_power_operations(drv: XenAPIDriver, sim: Any) -> None:
    inst = flavored_instance(ephemeral_gb=0, swap=0)
    spawn(drv, inst)
    drv.power_off(inst, timeout=5)
    assert state(drv, inst) == power_state.SHUTDOWN
    drv.power_off(inst)  # already off
    drv.power_on(None, inst, None)
    assert state(drv, inst) == power_state.RUNNING
    drv.power_on(None, inst, None)  # already on
    drv.power_off(inst)  # timeout 0: hard
    assert state(drv, inst) == power_state.SHUTDOWN
    drv.reboot(None, inst, None, "HARD")  # a reboot brings a stopped instance back
    assert state(drv, inst) == power_state.RUNNING
    drv.reboot(None, inst, None, "SOFT")
    assert state(drv, inst) == power_state.RUNNING
    drv.pause(inst)
    assert state(drv, inst) == power_state.PAUSED
    drv.unpause(inst)
    drv.unpause(inst)  # not paused: nothing to do
    assert state(drv, inst) == power_state.RUNNING
    drv.suspend(None, inst)
    assert state(drv, inst) == power_state.SUSPENDED
    drv.resume(None, inst, None)
    drv.resume(None, inst, None)  # not suspended: nothing to do
    assert state(drv, inst) == power_state.RUNNING
    drv.soft_delete(inst)
    assert state(drv, inst) == power_state.SHUTDOWN
    drv.restore(inst)
    assert state(drv, inst) == power_state.RUNNING
    drv.power_off(inst, timeout=5)
    drv.resume_state_on_host_boot(None, inst, None, objects.ShareMappingList())
    assert state(drv, inst) == power_state.RUNNING


def test_soft_reboot_falls_back_to_hard(drv: XenAPIDriver, sim: Any) -> None:
    inst = flavored_instance(ephemeral_gb=0, swap=0)
    spawn(drv, inst)
    sim.faults.fail_next("VM.clean_reboot", "VM_MISSING_PV_DRIVERS", "x")
    sim.reset_call_counts()
    drv.reboot(None, inst, None, "SOFT")
    assert sim.call_counts["VM.hard_reboot"] == 1
    assert state(drv, inst) == power_state.RUNNING


def test_rescue_and_unrescue(drv: XenAPIDriver, sim: Any) -> None:
    inst = flavored_instance(ephemeral_gb=0, swap=0)
    spawn(drv, inst)
    db = sim.pools[0].db
    vm_ref, rec = vm_of(sim, inst)
    root = next(db.get("VBD", v)["VDI"] for v in rec["VBDs"] if db.get("VBD", v)["userdevice"] == "0")

    drv.rescue(None, inst, None, image_meta(), "pw", None, objects.ShareMappingList())
    assert db.get("VM", vm_ref)["power_state"] == "Halted"
    rescue_refs = [r for r in db.all("VM") if db.get("VM", r)["other_config"].get("nova_rescue") == "true"]
    assert len(rescue_refs) == 1
    rescue = db.get("VM", rescue_refs[0])
    assert rescue["name_label"] == inst.name + "-rescue"
    assert rescue["power_state"] == "Running"
    devices = {db.get("VBD", v)["userdevice"]: db.get("VBD", v)["VDI"] for v in rescue["VBDs"]}
    assert devices["1"] == root  # the rescue VM sees the instance's own disk
    assert drv.list_instances() == [inst.name]  # the rescue VM is not an instance

    drv.unrescue(None, inst)
    assert not db.exists("VM", rescue_refs[0])
    assert not db.exists("VDI", devices["0"])  # the rescue disk is gone
    assert db.exists("VDI", root)  # the instance's disk is not
    assert state(drv, inst) == power_state.RUNNING
    drv.unrescue(None, inst)  # not in rescue: nothing to do
    assert state(drv, inst) == power_state.RUNNING


def test_destroy_while_rescued(drv: XenAPIDriver, sim: Any) -> None:
    inst = flavored_instance(ephemeral_gb=0, swap=0)
    spawn(drv, inst)
    drv.rescue(None, inst, None, image_meta(), "pw", None, objects.ShareMappingList())
    drv.destroy(None, inst, None)
    assert leftovers(sim, inst, drv.vmops.image_source.made) == {}


def test_attach_and_detach_interface(drv: XenAPIDriver, sim: Any) -> None:
    inst = flavored_instance(ephemeral_gb=0, swap=0)
    first = vif()
    spawn(drv, inst, [first])
    db = sim.pools[0].db
    second = vif()
    drv.attach_interface(None, inst, image_meta(), second)
    vm_ref, rec = vm_of(sim, inst)
    vifs = {db.get("VIF", v)["MAC"]: db.get("VIF", v) for v in rec["VIFs"]}
    assert vifs[second["address"]]["device"] == "1"
    assert vifs[second["address"]]["currently_attached"]
    drv.detach_interface(None, inst, second)
    _, rec = vm_of(sim, inst)
    assert [db.get("VIF", v)["MAC"] for v in rec["VIFs"]] == [first["address"]]


def test_diagnostics(drv: XenAPIDriver) -> None:
    inst = flavored_instance(ephemeral_gb=0, swap=0)
    spawn(drv, inst)
    assert drv.get_diagnostics(inst)["power_state"] == "Running"
    diags = drv.get_instance_diagnostics(inst)
    assert diags.state == "running"
    assert diags.driver == "xenapi"
    assert diags.memory_details.maximum == 512


def test_toolstack_restart_before_reboot_recovers(drv: XenAPIDriver, sim: Any) -> None:
    inst = flavored_instance(ephemeral_gb=0, swap=0)
    spawn(drv, inst)
    sim.restart_toolstack()  # every pooled session is now invalid
    drv.reboot(None, inst, None, "HARD")
    assert state(drv, inst) == power_state.RUNNING


def test_toolstack_restart_during_soft_reboot_recovers(drv: XenAPIDriver, sim: Any) -> None:
    inst = flavored_instance(ephemeral_gb=0, swap=0)
    spawn(drv, inst)
    # Sessions die and XAPI drops a connection while the soft reboot's task runs.
    sim.restart_toolstack()
    sim.faults.drop_connections(1, method="task.get_status")
    sim.reset_call_counts()
    drv.reboot(None, inst, None, "SOFT")
    assert not sim.faults.take_drop("task.get_status"), "the dropped connection was never hit"
    assert sim.call_counts["Async.VM.clean_reboot"] == 1
    assert state(drv, inst) == power_state.RUNNING


def test_soft_reboot_interrupted_falls_back_to_hard(drv: XenAPIDriver, sim: Any) -> None:
    inst = flavored_instance(ephemeral_gb=0, swap=0)
    spawn(drv, inst)
    # XAPI restarted under the task: it reports the task failed.
    sim.faults.fail_next("VM.clean_reboot", "INTERNAL_ERROR", "xapi restarted")
    sim.reset_call_counts()
    drv.reboot(None, inst, None, "SOFT")
    assert sim.call_counts["VM.hard_reboot"] == 1
    assert state(drv, inst) == power_state.RUNNING


def test_boot_from_volume_without_connection_info_fails_clearly(drv: XenAPIDriver, sim: Any) -> None:
    # Boot from volume itself is proven in tests/volumes; a broken mapping must undo everything.
    inst = flavored_instance()
    bdi = {"root_device_name": "/dev/xvda", "block_device_mapping": [{"mount_device": "/dev/xvda"}]}
    with pytest.raises(Exception, match="no connection info"):
        drv.spawn(None, inst, image_meta(), [], "", {}, network_info=None, block_device_info=bdi)
    assert leftovers(sim, inst, drv.vmops.image_source.made) == {}
