"""Snapshots through XenAPIDriver's spawn path and every handler: bytes, task states, cleanup."""

from __future__ import annotations

from typing import Any

import pytest
from image_helpers import (
    MiB,
    chain_tgz,
    make_chain,
    make_instance,
    pattern,
    read_image_disk,
    sr_state,
    vdi_bytes,
)
from nova.compute import task_states
from nova.network import model as network_model

from nova import exception as nova_exception
from nova import objects
from nova.virt import fake
from xenapi_driver import vhd
from xenapi_driver.driver import XenAPIDriver
from xenapi_driver.image import XenAPIImageSource

HANDLERS = ["direct_vhd", "vdi_remote_stream", "vdi_local_dev"]


@pytest.fixture
def driver(conf: Any) -> Any:
    drv = XenAPIDriver(fake.FakeVirtAPI())
    drv.init_host("compute-1")
    drv.vmops.image_source = XenAPIImageSource(drv._session, sr_finder=drv.hostops.instance_sr)
    try:
        yield drv
    finally:
        drv.cleanup_host("compute-1")


def boot(driver: Any, context: Any, image_id: str) -> Any:
    instance = make_instance(image_ref=image_id, os_type="linux")
    meta = objects.ImageMeta.from_dict({"id": image_id})
    driver.spawn(context, instance, meta, [], "", {}, network_info=network_model.NetworkInfo([]))
    return instance


def root_of(sim: Any, instance: Any) -> dict:
    """The VDI behind the instance's VM's device 0."""
    db = sim.pool.db
    for vm in db.all("VM"):
        if db.get("VM", vm)["other_config"].get("nova_uuid") != instance.uuid:
            continue
        for vbd in db.get("VM", vm)["VBDs"]:
            if db.get("VBD", vbd)["userdevice"] == "0":
                return db.get("VDI", db.get("VBD", vbd)["VDI"])
    raise AssertionError("no root disk")


class TaskStates:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None]] = []

    def __call__(self, task_state: str, expected_state: str | None = None) -> None:
        self.calls.append((task_state, expected_state))


@pytest.mark.parametrize(
    ("handler", "cache", "power"),
    [(h, "none", "on") for h in HANDLERS]
    + [("direct_vhd", "all", "off"), ("vdi_remote_stream", "all", "on")],
)
def test_snapshot_uploads_the_disk_as_it_was(
    handler, cache, power, conf, driver, sim, context, glance, sr_ref, sr_dir, tmp_path
):  # fmt: skip
    conf.set_override("image_handler", handler, group="xenserver")
    conf.set_override("cache_images", cache, group="xenserver")
    paths, _ = make_chain(tmp_path / "chain", depth=2)
    instance = boot(driver, context, glance.add(chain_tgz(paths), "vhd", "ovf"))
    if power == "off":
        driver.power_off(instance)  # a stopped instance is snapshotted too
    root = root_of(sim, instance)
    # The guest writes to its disk (into the leaf, as tapdisk would).
    with vhd.open_chain(str(sr_dir / f"{root['uuid']}.vhd")) as chain:
        chain.write(5 * MiB, pattern("guest", 128 * 1024))
    expected = vdi_bytes(sr_dir, root["uuid"])
    parent_before = root["sm_config"].get("vhd-parent")

    image_id = glance.queued()
    states = TaskStates()
    driver.vmops.image_source.snapshot(context, instance, image_id, states)

    assert states.calls == [
        (task_states.IMAGE_PENDING_UPLOAD, None),
        (task_states.IMAGE_UPLOADING, task_states.IMAGE_PENDING_UPLOAD),
    ]
    rec = glance.images[image_id]
    assert rec["status"] == "active"
    uploaded = read_image_disk(
        glance.data[image_id], rec["disk_format"], rec["container_format"], tmp_path / "up"
    )
    assert uploaded == expected
    # The temporary snapshot is gone and the GC coalesced the chain back.
    db = sim.pool.db
    assert not [r for r in db.all("VDI") if db.get("VDI", r)["is_a_snapshot"]]
    assert root_of(sim, instance)["sm_config"].get("vhd-parent") == parent_before
    assert vdi_bytes(sr_dir, root["uuid"]) == expected

    # A second server booted from the snapshot sees the same bytes.
    second = boot(driver, context, image_id)
    assert vdi_bytes(sr_dir, root_of(sim, second)["uuid"], len(expected)) == expected


def test_snapshot_of_an_absent_instance(driver, context, glance):
    with pytest.raises(nova_exception.InstanceNotRunning):
        driver.vmops.image_source.snapshot(context, make_instance(), glance.queued(), TaskStates())


def test_failed_upload_leaves_no_snapshot(conf, driver, sim, context, glance, sr_ref, sr_dir, tmp_path):
    conf.set_override("image_handler", "vdi_remote_stream", group="xenserver")
    paths, _ = make_chain(tmp_path / "chain", depth=1)
    instance = boot(driver, context, glance.add(chain_tgz(paths), "vhd", "ovf"))
    before = sr_state(sim, sr_ref, sr_dir)
    missing_image = "00000000-0000-4000-8000-000000000000"
    with pytest.raises(nova_exception.ImageNotFound):
        driver.vmops.image_source.snapshot(context, instance, missing_image, TaskStates())
    driver._session.call_xenapi("SR.scan", sr_ref)
    assert sr_state(sim, sr_ref, sr_dir) == before
