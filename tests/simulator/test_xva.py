"""Whole-VM export (``GET /export``) and import (``PUT /import``) as XVA, over HTTP with the SDK's tasks."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tarfile
import time
import urllib.error
import urllib.request
import xmlrpc.client
from urllib.parse import urlencode

import pytest
import XenAPI

from tests.simulator.sim_records import vm_record
from xenapi_driver.simulator import api

MiB = 1024**2
NULL = "OpaqueRef:NULL"


@pytest.fixture(scope="module")
def sim():
    s = api.start(hosts=[1, 1])
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def sessions(sim):
    out = []
    for pool in sim.pools:
        s = XenAPI.Session(pool.url)
        s.xenapi.login_with_password(sim.username, sim.password, "1.0", "xva-tests")
        out.append(s)
    yield out
    for s in out:
        with contextlib.suppress(Exception):
            s.xenapi.session.logout()


def http(url, path, session, method="GET", body=None, **query):
    q = urlencode({"session_id": session, **query})
    req = urllib.request.Request(f"{url.rstrip('/')}/{path}?{q}", data=body, method=method)
    with urllib.request.urlopen(req, timeout=60) as resp:
        return resp.read()


def wait(x, task):
    deadline = time.monotonic() + 30
    while x.task.get_status(task) == "pending" and time.monotonic() < deadline:
        time.sleep(0.02)
    return x.task.get_status(task)


def make_vm(x, name):
    return x.VM.create(
        vm_record(
            name,
            256 * MiB,
            name_description="exported",
            VCPUs_max="2",
            VCPUs_at_startup="2",
            PV_args="console=hvc0",
            other_config={"k": "v"},
        )
    )


def add_disk(x, vm, sr, size):
    vdi = x.VDI.create(
        {"SR": sr, "virtual_size": str(size), "type": "system", "sharable": False, "read_only": False,
         "other_config": {}, "name_label": "root", "name_description": ""}
    )  # fmt: skip
    x.VBD.create(
        {"VM": vm, "VDI": vdi, "userdevice": "0", "bootable": True, "mode": "RW", "type": "Disk",
         "empty": False, "other_config": {}, "qos_algorithm_type": "", "qos_algorithm_params": {}}
    )  # fmt: skip
    return vdi


def test_export_then_import_into_another_pool(sim, sessions):
    x, y = (s.xenapi for s in sessions)
    src, dst = sim.pools
    vm = make_vm(x, "xva-vm")
    disk = add_disk(x, vm, src.hosts[0].local_sr, 5 * MiB)
    data = os.urandom(MiB) + bytes(2 * MiB) + os.urandom(MiB // 2)
    http(src.url, "import_raw_vdi", sessions[0]._session, "PUT", data, vdi=disk, format="raw")
    mac = "02:11:22:33:44:55"
    x.VIF.create({"device": "0", "network": x.network.get_all()[0], "VM": vm, "MAC": mac, "MTU": "1500",
                  "other_config": {}, "qos_algorithm_type": "", "qos_algorithm_params": {}})  # fmt: skip
    task = x.task.create("export", "")
    xva = http(src.url, "export", sessions[0]._session, uuid=x.VM.get_uuid(vm), task_id=task)
    assert wait(x, task) == "success"
    # the archive is XAPI's: ova.xml first, 1 MiB chunks with SHA-1 checksums, zero chunks left out
    with tarfile.open(fileobj=io.BytesIO(xva), mode="r|") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar}
    names = list(members)
    assert names[0] == "ova.xml"
    chunks = sorted(n for n in names if "/" in n and not n.endswith(".checksum"))
    # 5 MiB rounds up to 6 MiB (whole VHD blocks): chunks 1, 2 and 4 are zeros; the last one always goes
    assert [n.split("/")[1] for n in chunks] == ["00000000", "00000003", "00000005"]
    for n in chunks:
        assert members[f"{n}.checksum"].decode() == hashlib.sha1(members[n]).hexdigest()
    (header,), _ = xmlrpc.client.loads(
        "<methodResponse><params><param>" + members["ova.xml"].decode() + "</param></params></methodResponse>"
    )
    classes = sorted(o["class"] for o in header["objects"])
    assert classes == ["SR", "VBD", "VDI", "VIF", "VM", "network"]
    vm_obj = next(o for o in header["objects"] if o["class"] == "VM")
    assert vm_obj["snapshot"]["VBDs"][0].startswith("Ref:")
    # import into the other pool: a new VM with the same configuration and disk contents
    task = y.task.create("import", "")
    http(dst.url, "import", sessions[1]._session, "PUT", xva, sr_id=dst.hosts[0].local_sr, task_id=task)
    assert wait(y, task) == "success"
    result = y.task.get_result(task)
    (new_vm,) = xmlrpc.client.loads(
        f"<methodResponse><params><param>{result}</param></params></methodResponse>"
    )[0][0]
    rec = y.VM.get_record(new_vm)
    assert rec["name_label"] == "xva-vm" and rec["power_state"] == "Halted"
    assert rec["uuid"] != x.VM.get_uuid(vm)
    assert rec["PV_args"] == "console=hvc0" and rec["VCPUs_max"] == "2" and rec["other_config"] == {"k": "v"}
    assert rec["memory_static_max"] == str(256 * MiB)
    new_disk = y.VBD.get_VDI(rec["VBDs"][0])
    assert y.VDI.get_SR(new_disk) == dst.hosts[0].local_sr
    assert y.VDI.get_virtual_size(new_disk) == str(6 * MiB)  # rounded to whole 2 MiB VHD blocks
    assert (
        http(dst.url, "export_raw_vdi", sessions[1]._session, vdi=new_disk, format="raw")[: len(data)] == data
    )
    (new_vif,) = rec["VIFs"]
    assert y.VIF.get_MAC(new_vif) == mac
    # the VM boots where it landed
    y.VM.start(new_vm, False, False)
    assert y.VM.get_power_state(new_vm) == "Running"
    y.VM.hard_shutdown(new_vm)
    # restore=true keeps the UUID, once
    http(dst.url, "import", sessions[1]._session, "PUT", xva, restore="true")
    assert y.VM.get_by_uuid(x.VM.get_uuid(vm))
    with pytest.raises(urllib.error.HTTPError):
        http(dst.url, "import", sessions[1]._session, "PUT", xva, restore="true")


def test_export_refuses_a_running_vm_and_import_a_bad_archive(sim, sessions):
    x = sessions[0].xenapi
    src = sim.pools[0]
    vm = make_vm(x, "busy")
    x.VM.start(vm, False, False)
    task = x.task.create("export", "")
    with pytest.raises(urllib.error.HTTPError):
        http(src.url, "export", sessions[0]._session, ref=vm, task_id=task)
    assert x.task.get_error_info(task) == ["VM_BAD_POWER_STATE", vm, "halted", "running"]
    x.VM.hard_shutdown(vm)
    before = set(x.VM.get_all())
    task = x.task.create("import", "")
    with pytest.raises(urllib.error.HTTPError):
        http(src.url, "import", sessions[0]._session, "PUT", b"not a tar archive" * 100, task_id=task)
    assert x.task.get_error_info(task)[0] == "IMPORT_ERROR"
    assert set(x.VM.get_all()) == before  # nothing half-imported
