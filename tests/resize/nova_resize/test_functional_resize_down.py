"""Resize down of an ext4 root through Nova's REST API: two computes on two simulated XenServer hosts.

Nova's functional harness with two nova-compute services running
``xenapi.XenAPIDriver`` (as ``test_functional_resize``). Each server boots
from a real guest disk written into its root VDI: an MBR and one ext4
partition (``mke2fs -d``) with known files, or a partition of random bytes.

Nova's API itself refuses to shrink the root disk of an image-backed server:
at boot it records ``image_min_disk`` = max(image min_disk, the flavor's
root_gb) in the instance's system metadata, and a resize to a flavor with a
smaller disk fails that check (HTTP 400) before any compute is asked. The
first test proves that; the others lower the recorded value (what an operator
would do in Nova's database) so that the request reaches the driver, whose
resize down is what is under test.
"""

from __future__ import annotations

import shutil
import tempfile
import types
import unittest
from pathlib import Path
from typing import Any

import resize_down_helpers as rdh
from nova.tests.functional import integrated_helpers
from nova.tests.functional.api import client
from xenapi_nova_tests import API_PASTE_INI, tolerate_newer_dependencies, xenapi_suite_skip_reason
from xenapi_nova_tests.simulator_fixture import XenServerConfFixture, add_network

GiB = 1024**3
FILES = rdh.guest_files()


class GuestDiskImageSource:
    """A root VDI of 2 GiB holding the class's guest disk pieces (MBR + partition)."""

    def __init__(self, session: Any, pool: Any, test: Any) -> None:
        self.session = session
        self.pool = pool
        self.test = test

    def root_vdi(self, context: Any, instance: Any, image_meta: Any, sr_ref: str) -> str:
        from xenapi_driver.simulator.handlers import storage

        vdi = self.session.call_xenapi(
            "VDI.create",
            {"name_label": f"guest disk for {instance.name}", "SR": sr_ref, "virtual_size": str(2 * GiB),
             "type": "user", "sharable": False, "read_only": False, "other_config": {}},
        )  # fmt: skip
        rdh.write_disk(storage.disk_path(self.pool, vdi), self.test.pieces)
        return vdi


class _ResizeDown:
    """The tests; a mixin so that unittest's loader runs them only through the classes below."""

    compute_driver = "xenapi.XenAPIDriver"
    transport = "rsync"
    simulator = None
    workdir: Path

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        from xenapi_driver.simulator import api

        cls.workdir = Path(tempfile.mkdtemp(prefix="resize-down-"))
        cls.ext4 = rdh.ext4_disk_pieces(cls.workdir, 2 * GiB, FILES)
        cls.simulator = api.start(hosts=[1, 1])

    @classmethod
    def tearDownClass(cls) -> None:
        if cls.simulator is not None:
            for pool in cls.simulator.pools:
                pool.hosts[0].sandbox.stop_sshd()
            cls.simulator.stop()
        shutil.rmtree(cls.workdir, ignore_errors=True)
        super().tearDownClass()

    def setUp(self) -> None:
        self.flags(api_paste_config=str(API_PASTE_INI), group="wsgi")
        super().setUp()
        tolerate_newer_dependencies()
        sim = self.simulator
        sim.reset()
        src, dst = sim.pools[0].hosts[0], sim.pools[1].hosts[0]
        for host in (src, dst):
            host.sandbox.start_sshd(host.address)
        src.sandbox.trust(dst.sandbox)
        dst.sandbox.trust(src.sandbox)
        from xenapi_driver import conf as xconf

        xconf.register_opts(xconf.CONF)
        self.flags(migration_transport=self.transport, group="xenserver")
        self.pieces = self.ext4
        self.hosts = {}
        self.nodes = {}
        for index in (0, 1):
            add_network(sim, "br-int", pool=index)
            XenServerConfFixture(self, sim, pool=index).setUp()
            from nova.virt import node

            node.LOCAL_NODE_UUID = None
            compute = self._start_compute(f"host{index}")
            driver = compute.manager.driver
            nodes = driver.get_nodenames_by_uuid()
            driver.get_nodenames_by_uuid = lambda use_cache=True, nodes=nodes: dict(nodes)
            driver.vmops.image_source = GuestDiskImageSource(driver._session, sim.pools[index], self)
            self.hosts[f"host{index}"] = (sim.pools[index], driver)
            self.nodes[f"host{index}"] = next(iter(nodes.values()))
        self.two = self._create_flavor(memory_mb=512, vcpu=1, disk=2, ephemeral=0)
        self.one = self._create_flavor(memory_mb=512, vcpu=1, disk=1, ephemeral=0)

    # -- helpers ------------------------------------------------------------------

    def _vms(self, server_id: str) -> dict[str, list[dict[str, Any]]]:
        found = {}
        for host, (pool, _driver) in self.hosts.items():
            records = [pool.db.get("VM", ref) for ref in pool.db.all("VM")]
            found[host] = [
                rec
                for rec in records
                if not rec["is_a_template"]
                and server_id
                in (rec["other_config"].get("nova_uuid"), rec["other_config"].get("nova_resize_of"))
            ]
        return found

    def _root_path(self, server: dict[str, Any]) -> Path:
        from xenapi_driver.simulator.handlers import storage

        pool, driver = self.hosts[server["OS-EXT-SRV-ATTR:host"]]
        vm_ref, _ = driver.vmops.lookup(
            types.SimpleNamespace(uuid=server["id"], name=server["OS-EXT-SRV-ATTR:instance_name"])
        )
        for vbd in pool.db.get("VM", vm_ref)["VBDs"]:
            rec = pool.db.get("VBD", vbd)
            if rec["userdevice"] == "0":
                return storage.disk_path(pool, rec["VDI"])
        raise AssertionError("no root disk")

    def _boot(self) -> dict[str, Any]:
        server = self._create_server(flavor_id=self.two, networks="none", host="host0")
        self.assertEqual("host0", server["OS-EXT-SRV-ATTR:host"])
        return server

    def _let_nova_shrink(self, server: dict[str, Any]) -> None:
        """Lower the image_min_disk Nova recorded at boot (the boot flavor's root_gb) to 0."""
        from nova import context, objects

        ctxt = context.get_admin_context()
        inst = objects.Instance.get_by_uuid(ctxt, server["id"], expected_attrs=["system_metadata"])
        self.assertEqual("2", inst.system_metadata.get("image_min_disk"))
        inst.system_metadata["image_min_disk"] = "0"
        inst.save()

    def _allocations(self, server: dict[str, Any], host: str) -> dict[str, int]:
        rp = self._get_provider_uuid_by_host(self.nodes[host])
        return self._get_allocations_by_server_uuid(server["id"])[rp]["resources"]

    def _running(self, server: dict[str, Any]) -> list[dict[str, Any]]:
        return [
            r
            for recs in self._vms(server["id"]).values()
            for r in recs
            if r["other_config"].get("nova_uuid") == server["id"]
        ]

    # -- the tests ------------------------------------------------------------------

    def test_novas_api_refuses_to_shrink_an_image_backed_root(self) -> None:
        server = self._boot()
        with self.assertRaises(client.OpenStackApiException) as err:
            self.api.post_server_action(server["id"], {"resize": {"flavorRef": self.one}})
        self.assertEqual(400, err.exception.response.status_code)
        self.assertEqual([], self._vms(server["id"])["host1"])

    def test_resize_down_ext4_then_confirm(self) -> None:
        server = self._boot()
        before = rdh.digest_allocated(self._root_path(server))
        self._let_nova_shrink(server)
        server = self._resize_server(server, self.one)
        self.assertEqual("host1", server["OS-EXT-SRV-ATTR:host"])
        path = self._root_path(server)
        rdh.check_shrunk_disk(path, GiB, FILES, self.workdir)
        (running,) = self._running(server)
        self.assertEqual("Running", running["power_state"])
        self.assertEqual({"VCPU": 1, "MEMORY_MB": 512, "DISK_GB": 1}, self._allocations(server, "host1"))
        kept = self._vms(server["id"])["host0"]
        self.assertEqual(1, len(kept))
        self.assertEqual(server["id"], kept[0]["other_config"]["nova_resize_of"])

        server = self._confirm_resize(server)
        self.assertEqual("host1", server["OS-EXT-SRV-ATTR:host"])
        self.assertEqual([], self._vms(server["id"])["host0"])
        rdh.check_shrunk_disk(self._root_path(server), GiB, FILES, self.workdir)
        self.assertEqual({"VCPU": 1, "MEMORY_MB": 512, "DISK_GB": 1}, self._allocations(server, "host1"))
        self.assertRequestMatchesUsage(
            {"VCPU": 0, "MEMORY_MB": 0, "DISK_GB": 0}, self._get_provider_uuid_by_host(self.nodes["host0"])
        )
        self.assertNotEqual(before, rdh.digest_allocated(self._root_path(server)))

    def test_resize_down_ext4_then_revert(self) -> None:
        server = self._boot()
        before = rdh.digest_allocated(self._root_path(server))
        self._let_nova_shrink(server)
        server = self._resize_server(server, self.one)
        server = self._revert_resize(server)
        self.assertEqual("host0", server["OS-EXT-SRV-ATTR:host"])
        self.assertEqual(before, rdh.digest_allocated(self._root_path(server)))
        self.assertEqual([], self._vms(server["id"])["host1"])
        (running,) = self._running(server)
        self.assertEqual("Running", running["power_state"])
        self.assertEqual({"VCPU": 1, "MEMORY_MB": 512, "DISK_GB": 2}, self._allocations(server, "host0"))

    def test_resize_down_of_a_non_ext_root_is_refused_and_the_server_stays_active(self) -> None:
        from nova import context, objects

        self.pieces = rdh.random_partition_pieces(2 * GiB)
        server = self._boot()
        before = rdh.digest_allocated(self._root_path(server))
        self._let_nova_shrink(server)
        self.api.post_server_action(server["id"], {"resize": {"flavorRef": self.one}})
        self._wait_for_migration_status(server, ["error"])
        server = self._wait_for_state_change(server, "ACTIVE")
        self.assertEqual("host0", server["OS-EXT-SRV-ATTR:host"])
        self.assertEqual(before, rdh.digest_allocated(self._root_path(server)))
        self.assertEqual([], self._vms(server["id"])["host1"])
        (running,) = self._running(server)
        self.assertEqual("Running", running["power_state"])
        # The fault is recorded just before the action's event ends in Error (after ACTIVE is set).
        self._wait_for_instance_action_event(server, "resize", "compute_resize_instance", "Error")
        faults = objects.InstanceFaultList.get_by_instance_uuids(context.get_admin_context(), [server["id"]])
        messages = [f.message for f in faults]
        self.assertTrue(any("not ext3/ext4" in m for m in messages), messages)
        self.assertEqual({"VCPU": 1, "MEMORY_MB": 512, "DISK_GB": 2}, self._allocations(server, "host0"))


@unittest.skipIf(xenapi_suite_skip_reason(), xenapi_suite_skip_reason())
class XenAPIResizeDownRsyncTest(_ResizeDown, integrated_helpers.ProviderUsageBaseTestCase):
    transport = "rsync"


@unittest.skipIf(xenapi_suite_skip_reason(), xenapi_suite_skip_reason())
class XenAPIResizeDownXapiTest(_ResizeDown, integrated_helpers.ProviderUsageBaseTestCase):
    transport = "xapi"
