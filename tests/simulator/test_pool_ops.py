"""pool.join / join_force / eject / designate_new_master through the real SDK."""

from __future__ import annotations

import contextlib

import pytest
import XenAPI

from tests.simulator.sim_records import fails, vm_record
from xenapi_driver.simulator import api

MiB = 1024**2
NULL = "OpaqueRef:NULL"


@pytest.fixture
def world():
    sim = api.start(hosts=[2, 1, 2])
    try:
        yield sim
    finally:
        sim.stop()


def login(sim, url):
    s = XenAPI.Session(url)
    s.xenapi.login_with_password(sim.username, sim.password, "1.0", "pool-ops-tests")
    return s


def make_vm(x, name):
    return x.VM.create(vm_record(name))


def test_join_moves_the_host_and_its_local_storage(world):
    master_pool, joiner_pool, big_pool = world.pools
    joiner = joiner_pool.master
    a = login(world, master_pool.url)
    j = login(world, joiner_pool.url)
    x, y = a.xenapi, j.xenapi
    shared = x.SR.create(master_pool.master.ref, {}, "0", "shared", "", "nfs", "user", True, {})
    vdi = y.VDI.create(
        {
            "SR": joiner.local_sr,
            "virtual_size": str(4 * MiB),
            "type": "user",
            "sharable": False,
            "read_only": False,
            "other_config": {},
            "name_label": "kept",
            "name_description": "",
        }
    )
    vm = make_vm(y, "travels")
    y.VM.start(vm, False, False)
    address = master_pool.master.address
    assert fails(y.pool.join, address, world.username, world.password) == [
        "JOINING_HOST_CANNOT_HAVE_RUNNING_OR_SUSPENDED_VMS"
    ]
    y.VM.hard_shutdown(vm)
    assert fails(y.pool.join, address, world.username, "wrong")[0] == "SESSION_AUTHENTICATION_FAILED"
    assert fails(y.pool.join, "127.0.9.9", world.username, world.password) == [
        "JOINING_HOST_CONNECTION_FAILED"
    ]
    b = login(world, big_pool.url)
    assert fails(b.xenapi.pool.join, address, world.username, world.password) == [
        "JOINING_HOST_CANNOT_BE_MASTER_OF_OTHER_HOSTS"
    ]
    y.pool.join(address, world.username, world.password)
    hosts = x.host.get_all()
    assert joiner.ref in hosts and len(hosts) == 3
    assert x.VDI.get_name_label(vdi) == "kept" and x.VDI.get_SR(vdi) == joiner.local_sr
    assert x.VM.get_name_label(vm) == "travels"
    assert any(x.PBD.get_host(p) == joiner.ref for p in x.SR.get_PBDs(shared))
    assert joiner.sr_path(x.SR.get_uuid(shared)).is_dir()
    # The joined host is now a pool member: logging in there answers HOST_IS_SLAVE.
    with pytest.raises(XenAPI.Failure) as info:
        login(world, joiner.url)
    assert info.value.details == ["HOST_IS_SLAVE", master_pool.master.address]
    x.VM.start_on(vm, joiner.ref, False, False)
    assert x.VM.get_resident_on(vm) == joiner.ref
    x.VM.hard_shutdown(vm)
    for s in (a, b):
        with contextlib.suppress(Exception):
            s.xenapi.session.logout()


def test_eject_and_designate_new_master(world):
    pool = world.pools[2]
    master, member = pool.hosts
    a = login(world, pool.url)
    x = a.xenapi
    assert fails(x.pool.eject, master.ref) == ["HOST_CANNOT_DESTROY_SELF", master.ref]
    vm = make_vm(x, "resident")
    x.VM.start_on(vm, member.ref, False, False)
    assert fails(x.pool.eject, member.ref) == ["HOST_HAS_RESIDENT_VMS", member.ref]
    x.VM.hard_shutdown(vm)

    x.pool.designate_new_master(member.ref)
    # Both toolstacks restarted: the old session is gone and the SDK's re-login meets a slave.
    assert fails(x.pool.get_all) == ["HOST_IS_SLAVE", member.address]
    with pytest.raises(XenAPI.Failure) as info:
        login(world, master.url)
    assert info.value.details == ["HOST_IS_SLAVE", member.address]
    b = login(world, member.url)
    y = b.xenapi
    assert y.pool.get_master(y.pool.get_all()[0]) == member.ref

    y.pool.eject(master.ref)
    assert master.ref not in y.host.get_all()
    c = login(world, master.url)  # the ejected host is a pool of its own again
    z = c.xenapi
    assert z.host.get_all() == [z.pool.get_master(z.pool.get_all()[0])]
    assert z.host.get_uuid(z.host.get_all()[0]) == master.uuid
    assert z.SR.get_VDIs(master.local_sr) == []
