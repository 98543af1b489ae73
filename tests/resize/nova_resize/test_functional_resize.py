"""Resize and cold migration through Nova's REST API: two computes on two simulated XenServer hosts.

Nova 34's functional harness (API, conductor, scheduler, placement fixture,
fake Neutron/Glance/Cinder) with two nova-compute services running
``xenapi.XenAPIDriver``, each managing its own simulated host (two pools).
After each operation the root disk's bytes are read back through the VHD
chain, the original VM is checked gone or restored, and placement usage and
allocations are checked.

The computes run ``XenAPIDriver`` itself: its resize and cold-migration
methods delegate to :class:`xenapi_driver.migrateops.MigrateOps`.
"""

from __future__ import annotations

import hashlib
import random
import types
import unittest
from pathlib import Path
from typing import Any

from nova.tests.functional import integrated_helpers
from xenapi_nova_tests import API_PASTE_INI, tolerate_newer_dependencies, xenapi_suite_skip_reason
from xenapi_nova_tests.simulator_fixture import BlankImageSource, XenServerConfFixture, add_network

MiB = 1024**2


class _Harness:
    """Computes on simulated hosts and XAPI-side views; a mixin, run through the classes below."""

    compute_driver = "xenapi.XenAPIDriver"
    transport = "rsync"
    simulator = None
    compute_count = 2  # host0 (pool 0) and host1 (pool 1)

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        from xenapi_driver.simulator import api

        cls.simulator = api.start(hosts=[1, 1])

    @classmethod
    def tearDownClass(cls) -> None:
        if cls.simulator is not None:
            for pool in cls.simulator.pools:
                pool.hosts[0].sandbox.stop_sshd()
            cls.simulator.stop()
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

        xconf.register_opts(xconf.CONF)  # as loading the driver would
        self.flags(migration_transport=self.transport, group="xenserver")
        self.hosts = {}
        self.nodes = {}
        for index in range(self.compute_count):
            add_network(sim, "br-int", pool=index)
            fixture = XenServerConfFixture(self, sim, pool=index)
            fixture.setUp()  # flags for this compute's driver; it connects in init_host
            # Two computes in one process: each needs its own node UUID (Nova keeps one per
            # process in nova.virt.node); pin each driver's answer once it has started.
            from nova.virt import node

            node.LOCAL_NODE_UUID = None
            compute = self._start_compute(f"host{index}")
            driver = compute.manager.driver
            nodes = driver.get_nodenames_by_uuid()
            driver.get_nodenames_by_uuid = lambda use_cache=True, nodes=nodes: dict(nodes)
            driver.vmops.image_source = self._image_source(driver, sim.pools[index])
            self.hosts[f"host{index}"] = (sim.pools[index], driver)
            self.nodes[f"host{index}"] = next(iter(nodes.values()))
        self._create_flavors()

    def _image_source(self, driver: Any, pool: Any) -> Any:
        """What each compute's VMOps builds root disks from (an empty disk here)."""
        return BlankImageSource(driver._session)

    def _create_flavors(self) -> None:
        self.small = self._create_flavor(memory_mb=512, vcpu=1, disk=1, ephemeral=0)
        self.big = self._create_flavor(memory_mb=1024, vcpu=1, disk=2, ephemeral=0)

    # -- XAPI-side views -------------------------------------------------------

    def _vms(self, server_id: str) -> dict[str, list[dict[str, Any]]]:
        """Each compute host's VMs for the server: {'host0': [records], ...} (kept originals too)."""
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

    def _write(self, server: dict[str, Any]) -> str:
        from xenapi_driver import vhd

        path = self._root_path(server)
        rng = random.Random(server["id"])
        with vhd.open_chain(str(path)) as chain:
            for _ in range(6):
                chain.write(rng.randrange(0, 4096) * 4096, rng.randbytes(64 * 1024))
        return self._digest(server)

    def _digest(self, server: dict[str, Any]) -> str:
        from xenapi_driver import vhd

        with vhd.open_chain(str(self._root_path(server)), writable=False) as chain:
            return hashlib.sha256(chain.read(0, 32 * MiB)).hexdigest()

    def _boot(self) -> tuple[dict[str, Any], str]:
        server = self._create_server(flavor_id=self.small, networks="none", host="host0")
        self.assertEqual("host0", server["OS-EXT-SRV-ATTR:host"])
        return server, self._write(server)

    def _assert_on(self, server: dict[str, Any], host: str, flavor: str, digest: str, kept: bool) -> None:
        self.assertEqual(host, server["OS-EXT-SRV-ATTR:host"])
        self.assertEqual(digest, self._digest(server))
        vms = self._vms(server["id"])
        running = [
            r for recs in vms.values() for r in recs if r["other_config"].get("nova_uuid") == server["id"]
        ]
        self.assertEqual(1, len(running), vms)
        self.assertEqual("Running", running[0]["power_state"])
        kept_vms = [r for recs in vms.values() for r in recs if r["other_config"].get("nova_resize_of")]
        self.assertEqual(kept, bool(kept_vms), vms)
        rp = self._get_provider_uuid_by_host(self.nodes[host])
        fl = self.api.get_flavor(flavor)
        expected = {"VCPU": fl["vcpus"], "MEMORY_MB": fl["ram"],
                    "DISK_GB": fl["disk"] + fl.get("OS-FLV-EXT-DATA:ephemeral", 0)}  # fmt: skip
        self.assertEqual(expected, self._get_allocations_by_server_uuid(server["id"])[rp]["resources"])


class _Resize(_Harness):
    """Between two computes (two pools): the tests run for each transport."""

    def test_resize_up_then_confirm(self) -> None:
        server, digest = self._boot()
        server = self._resize_server(server, self.big)
        self._assert_on(server, "host1", self.big, digest, kept=True)
        server = self._confirm_resize(server)
        self._assert_on(server, "host1", self.big, digest, kept=False)
        self.assertEqual([], self._vms(server["id"])["host0"])
        self.assertRequestMatchesUsage(
            {"VCPU": 0, "MEMORY_MB": 0, "DISK_GB": 0}, self._get_provider_uuid_by_host(self.nodes["host0"])
        )

    def test_resize_up_then_revert(self) -> None:
        server, digest = self._boot()
        server = self._resize_server(server, self.big)
        server = self._revert_resize(server)
        self._assert_on(server, "host0", self.small, digest, kept=False)
        self.assertEqual([], self._vms(server["id"])["host1"])
        self.assertRequestMatchesUsage(
            {"VCPU": 0, "MEMORY_MB": 0, "DISK_GB": 0}, self._get_provider_uuid_by_host(self.nodes["host1"])
        )

    def test_cold_migrate_then_confirm_and_revert(self) -> None:
        server, digest = self._boot()
        server = self._migrate_server(server)
        self._assert_on(server, "host1", self.small, digest, kept=True)
        server = self._revert_resize(server)
        self._assert_on(server, "host0", self.small, digest, kept=False)
        server = self._migrate_server(server)
        server = self._confirm_resize(server)
        self._assert_on(server, "host1", self.small, digest, kept=False)

    def test_ephemeral_shrink_is_refused_and_the_server_stays_active(self) -> None:
        """Root resize down is refused by Nova's API itself (image min_disk); an ephemeral
        shrink reaches the driver, which refuses with a reason and keeps the server ACTIVE."""
        eph2 = self._create_flavor(memory_mb=512, vcpu=1, disk=1, ephemeral=2)
        eph1 = self._create_flavor(memory_mb=512, vcpu=1, disk=1, ephemeral=1)
        server = self._create_server(flavor_id=eph2, networks="none", host="host0")
        digest = self._write(server)
        self.api.post_server_action(server["id"], {"resize": {"flavorRef": eph1}})
        self._wait_for_migration_status(server, ["error"])
        server = self._wait_for_state_change(server, "ACTIVE")
        self._assert_on(server, "host0", eph2, digest, kept=False)
        self.assertEqual([], self._vms(server["id"])["host1"])

    def test_ephemeral_disk_moves(self) -> None:
        eph = self._create_flavor(memory_mb=512, vcpu=1, disk=1, ephemeral=1)
        eph2 = self._create_flavor(memory_mb=512, vcpu=1, disk=1, ephemeral=2)
        server = self._create_server(flavor_id=eph, networks="none", host="host0")
        digest = self._write(server)
        server = self._resize_server(server, eph2)
        self._assert_on(server, "host1", eph2, digest, kept=True)
        server = self._confirm_resize(server)
        self._assert_on(server, "host1", eph2, digest, kept=False)


@unittest.skipIf(xenapi_suite_skip_reason(), xenapi_suite_skip_reason())
class XenAPIResizeRsyncTest(_Resize, integrated_helpers.ProviderUsageBaseTestCase):
    transport = "rsync"


@unittest.skipIf(xenapi_suite_skip_reason(), xenapi_suite_skip_reason())
class XenAPIResizeXapiTest(_Resize, integrated_helpers.ProviderUsageBaseTestCase):
    transport = "xapi"


class _SameHost(_Harness):
    """The only compute is this host: Nova resizes in place (``allow_resize_to_same_host``)."""

    compute_count = 1

    def setUp(self) -> None:
        super().setUp()
        self.flags(allow_resize_to_same_host=True)

    def _usage_is(self, flavor: str) -> None:
        fl = self.api.get_flavor(flavor)
        self.assertRequestMatchesUsage(
            {"VCPU": fl["vcpus"], "MEMORY_MB": fl["ram"], "DISK_GB": fl["disk"]},
            self._get_provider_uuid_by_host(self.nodes["host0"]),
        )

    def _sr_vdis(self) -> set[str]:
        """The visible VDIs of host0's SR after a scan (its garbage collector ran)."""
        pool, driver = self.hosts["host0"]
        sr_ref = driver.hostops.instance_sr()
        driver._session.call_xenapi("SR.scan", sr_ref)
        return {
            rec["uuid"]
            for rec in (pool.db.get("VDI", ref) for ref in pool.db.all("VDI"))
            if rec["SR"] == sr_ref and rec["managed"]
        }

    def _root_gb(self, server: dict[str, Any]) -> float:
        from xenapi_driver import vhd

        return vhd.info(str(self._root_path(server))).virtual_size / 1024**3

    def test_same_host_resize_up_then_confirm(self) -> None:
        server, digest = self._boot()
        before = self._sr_vdis()
        server = self._resize_server(server, self.big)
        self._assert_on(server, "host0", self.big, digest, kept=True)
        self.assertEqual(2, len(self._vms(server["id"])["host0"]))  # the new VM and the kept original
        self.assertEqual(2, self._root_gb(server))
        server = self._confirm_resize(server)
        self._assert_on(server, "host0", self.big, digest, kept=False)
        self.assertEqual(1, len(self._vms(server["id"])["host0"]))
        self._usage_is(self.big)
        # the original's disk and the resize's clones are gone; the disk reads back after the GC
        self.assertEqual(len(before), len(self._sr_vdis()))
        self.assertFalse(before & self._sr_vdis())
        self.assertEqual(digest, self._digest(server))

    def test_same_host_resize_then_revert(self) -> None:
        server, digest = self._boot()
        before = self._sr_vdis()
        server = self._resize_server(server, self.big)
        self._assert_on(server, "host0", self.big, digest, kept=True)
        server = self._revert_resize(server)
        self._assert_on(server, "host0", self.small, digest, kept=False)
        self.assertEqual(1, len(self._vms(server["id"])["host0"]))
        self.assertEqual(1, self._root_gb(server))
        self._usage_is(self.small)
        self.assertEqual(before, self._sr_vdis())  # the clones are gone, the original's disk is back
        self.assertEqual(digest, self._digest(server))


@unittest.skipIf(xenapi_suite_skip_reason(), xenapi_suite_skip_reason())
class XenAPISameHostResizeTest(_SameHost, integrated_helpers.ProviderUsageBaseTestCase):
    transport = "rsync"
