"""Through Nova's REST API: a pool aggregate joins three computes' hosts, live
migration within the pool, block migration between single-host pools, ejection.

Nova's functional harness runs the API, conductor, scheduler and five
nova-computes in this process (placement fixture, SQLite, fake RPC transport,
so the migrate data really is serialized between services). Each compute
manages its own simulated XenServer host; hosts 0-2 start as single-host pools
and become one pool through the aggregate, hosts 3 and 4 stay alone.
Run with ``python -m xenapi_nova_tests._runner`` (see tests/nova/README.md).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import nova.context  # noqa: E402
import xenapi_nova_tests  # noqa: F401  (the runner imports it before anything else)
from nova.tests.functional import integrated_helpers  # noqa: E402
from xenapi_nova_tests import API_PASTE_INI, tolerate_newer_dependencies  # noqa: E402
from xenapi_nova_tests.simulator_fixture import prepare_driver  # noqa: E402

import nova.virt  # noqa: E402

nova.virt.__path__.append(str(Path(__file__).resolve().parent / "nova_virt"))

GiB = 1024**3
MiB = 1024**2
N_COMPUTES = 5
ROUNDS = 3  # reconcile runs per compute allowed to converge


def _xapi(sim: Any, url: str) -> Any:
    import XenAPI

    session = XenAPI.Session(url)
    session.xenapi.login_with_password(sim.username, sim.password, "1.0", "xenapi-driver-tests")
    return session


class PoolAggregateFunctionalTest(integrated_helpers._IntegratedTestBase):
    ADMIN_API = True
    microversion = "latest"
    simulator = None

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        from xenapi_driver.simulator import api

        cls.simulator = api.start(hosts=[1] * N_COMPUTES)
        cls.hosts = [p.hosts[0] for p in cls.simulator.pools]

    @classmethod
    def tearDownClass(cls) -> None:
        if cls.simulator is not None:
            cls.simulator.stop()
        super().tearDownClass()

    # -- set-up ------------------------------------------------------------

    def _setup_services(self) -> None:
        from xenapi_driver import conf as xconf

        xconf.register_opts(xconf.CONF)
        self.flags(api_paste_config=str(API_PASTE_INI), group="wsgi")
        tolerate_newer_dependencies()
        self.flags(compute_driver="xenapi_pool_testdriver.PoolTestDriver")
        self._prepare_xenserver()
        super()._setup_services()
        for compute in self.computes.values():
            prepare_driver(compute.manager.driver)

    def _prepare_xenserver(self) -> None:
        """Operator set-up: the master's shared default SR, a nova-compute VM on every host."""
        from nova.virt.xenapi_pool_testdriver import PoolTestDriver

        sim = self.simulator
        master = self.hosts[0]
        s = _xapi(sim, master.url)
        try:
            x = s.xenapi
            sr = x.SR.create(
                master.ref, {"server": "127.0.0.1", "serverpath": "/export/pool"}, "0", "NFS shared",
                "pool storage", "nfs", "user", True, {},
            )  # fmt: skip
            x.pool.set_default_SR(x.pool.get_all()[0], sr)
        finally:
            s.xenapi.session.logout()
        PoolTestDriver.compute_vm_uuids = {
            f"compute{i}": self._compute_vm(host, f"nova-compute VM {i}") for i, host in enumerate(self.hosts)
        }

    def _compute_vm(self, host: Any, name: str) -> str:
        s = _xapi(self.simulator, host.url)
        try:
            x = s.xenapi
            vdi = x.VDI.create(
                {"name_label": f"{name} disk", "SR": host.local_sr, "virtual_size": str(GiB),
                 "type": "system",
                 "sharable": False, "read_only": False, "other_config": {}}
            )  # fmt: skip
            vm = host.pool.db.create(
                "VM", name_label=name, is_a_template=False, power_state="Halted", affinity=host.ref,
                memory_static_max=GiB, memory_dynamic_max=GiB, memory_dynamic_min=GiB, memory_static_min=GiB,
                VCPUs_max=1, VCPUs_at_startup=1, HVM_boot_policy="BIOS order", domain_type="hvm",
            )  # fmt: skip
            x.VBD.create(
                {"VM": vm, "VDI": vdi, "userdevice": "0", "bootable": True, "mode": "RW", "type": "Disk",
                 "empty": False, "other_config": {}, "qos_algorithm_type": "", "qos_algorithm_params": {}}
            )  # fmt: skip
            x.VM.start(vm, False, False)
            return x.VM.get_uuid(vm)
        finally:
            s.xenapi.session.logout()

    def _setup_compute_service(self) -> Any:
        for i, host in enumerate(self.hosts):
            self.flags(
                connection_url=host.url,
                connection_username=self.simulator.username,
                connection_password=self.simulator.password,
                group="xenserver",
            )
            self._start_compute(f"compute{i}")
        return self.computes["compute0"]

    # -- helpers -----------------------------------------------------------

    def _reconcile(self, rounds: int = ROUNDS) -> None:
        """``rounds`` periodic runs of every compute's pool reconciliation."""
        ctx = nova.context.get_admin_context()
        for _ in range(rounds):
            for compute in self.computes.values():
                driver = compute.manager.driver
                if driver._pool is not None:
                    driver._pool.reconcile(ctx)

    def _metadata(self, agg_id: int) -> dict[str, str]:
        return self.api.api_get(f"/os-aggregates/{agg_id}").body["aggregate"]["metadata"]

    def _pool_of(self, host: Any) -> set[str]:
        s = _xapi(self.simulator, host.pool.master.url)
        try:
            return {s.xenapi.host.get_uuid(h) for h in s.xenapi.host.get_all()}
        finally:
            s.xenapi.session.logout()

    def _vm(self, server: dict[str, Any]) -> tuple[str, str, Any]:
        """(power state, resident host uuid, pool) of the server's VM, wherever it is."""
        for pool in list(self.simulator.pools):
            for _ref, rec in pool.db.items("VM"):
                if rec["other_config"].get("nova_uuid") == server["id"] and not rec["is_a_template"]:
                    resident = rec["resident_on"]
                    where = pool.db.get("host", resident)["uuid"] if resident != "OpaqueRef:NULL" else ""
                    return rec["power_state"], where, pool
        self.fail(f"no VM for server {server['id']}")

    def _disk_path(self, server: dict[str, Any]) -> Path:
        from xenapi_driver.simulator.handlers import storage

        _state, _where, pool = self._vm(server)
        db = pool.db
        for _ref, rec in db.items("VM"):
            if rec["other_config"].get("nova_uuid") != server["id"]:
                continue
            for vbd in rec["VBDs"]:
                vbd_rec = db.get("VBD", vbd)
                if vbd_rec["type"] == "Disk" and not storage.is_null(vbd_rec["VDI"]):
                    vdi = db.get("VDI", vbd_rec["VDI"])
                    sr_uuid = db.get("SR", vdi["SR"])["uuid"]
                    return pool.master.sr_path(sr_uuid) / f"{vdi['location']}.vhd"
        self.fail("no disk")

    def _write_marker(self, server: dict[str, Any]) -> None:
        from xenapi_driver import vhd

        with vhd.open_chain(str(self._disk_path(server))) as chain:
            for n, offset in enumerate((0, 5 * MiB, 700 * MiB)):
                chain.write(offset, bytes([n + 7]) * 4096 + server["id"].encode() * 16)

    def _digest(self, server: dict[str, Any]) -> str:
        from xenapi_driver import vhd

        digest = hashlib.sha256()
        with vhd.open_chain(str(self._disk_path(server))) as chain:
            for offset in range(0, chain.virtual_size, 8 * MiB):
                digest.update(chain.read(offset, min(8 * MiB, chain.virtual_size - offset)))
            assert chain.read(0, 4096) == bytes([7]) * 4096
        return digest.hexdigest()

    # -- the test ------------------------------------------------------------

    def test_pool_aggregate_and_live_migration(self) -> None:
        hosts = self.hosts
        agg = self.api.post_aggregate({"aggregate": {"name": "xenpool1", "availability_zone": "xenpool-az"}})
        self.api.post_aggregate_action(
            agg["id"],
            {"set_metadata": {"metadata": {"hypervisor_pool": "true", "operational_state": "created"}}},
        )
        self.api.add_host_to_aggregate(agg["id"], "compute0")
        self._reconcile(1)
        meta = self._metadata(agg["id"])
        self.assertEqual("compute0", meta["master_compute"])
        self.assertEqual("active", meta["operational_state"], meta)
        self.api.add_host_to_aggregate(agg["id"], "compute1")
        self.api.add_host_to_aggregate(agg["id"], "compute2")
        self._reconcile()
        meta = self._metadata(agg["id"])
        self.assertEqual("active", meta["operational_state"], meta)
        self.assertEqual({h.uuid for h in hosts[:3]}, self._pool_of(hosts[0]))
        self.assertNotIn(self.simulator.password, " ".join(meta.values()))
        # The members' computes keep managing their own hosts; the periodic
        # resource update now sees the pool's shared SR.
        self._run_periodics()

        # Live migration within the pool: XenMotion, the disk stays on the shared SR.
        server = self._create_server(networks="none", host="compute1")
        self.assertEqual(("Running", hosts[1].uuid), self._vm(server)[:2])
        self._write_marker(server)
        before = self._digest(server)
        self.simulator.reset_call_counts()
        server = self._live_migrate(server, host="compute2")
        self.assertEqual(1, self.simulator.call_counts["Async.VM.pool_migrate"])
        self.assertEqual(0, self.simulator.call_counts["Async.VM.migrate_send"])
        self.assertEqual("compute2", server["OS-EXT-SRV-ATTR:host"])
        self.assertEqual(("Running", hosts[2].uuid), self._vm(server)[:2])
        self.assertEqual(before, self._digest(server))
        before_pool = before

        # Block migration between two single-host pools: Storage XenMotion.
        other = self._create_server(networks="none", host="compute3")
        self.assertEqual(("Running", hosts[3].uuid), self._vm(other)[:2])
        self._write_marker(other)
        before = self._digest(other)
        self.simulator.reset_call_counts()
        other = self._live_migrate(other, host="compute4")
        self.assertEqual(1, self.simulator.call_counts["VM.assert_can_migrate"])
        self.assertEqual(1, self.simulator.call_counts["Async.VM.migrate_send"])
        self.assertEqual("compute4", other["OS-EXT-SRV-ATTR:host"])
        state, where, pool = self._vm(other)
        self.assertEqual(("Running", hosts[4].uuid), (state, where))
        self.assertIs(hosts[4].pool, pool)
        self.assertEqual(before, self._digest(other))

        # Host maintenance mode (os-hosts, before microversion 2.43) empties a pool
        # member onto the others through Nova's live migration, so Nova's records follow.
        self.api.microversion = "2.42"
        try:
            answer = self.api.api_put("/os-hosts/compute2", {"maintenance_mode": "enable"}).body
        finally:
            self.api.microversion = "latest"
        self.assertEqual("on_maintenance", answer["maintenance_mode"])
        server = self._wait_for_server_parameter(
            server, {"OS-EXT-SRV-ATTR:host": "compute0", "status": "ACTIVE"}
        )
        self._wait_for_migration_status(server, ["completed"])
        self.assertEqual(("Running", hosts[0].uuid), self._vm(server)[:2])
        self.assertEqual(before_pool, self._digest(server))
        self.api.microversion = "2.42"
        try:
            self.api.api_put("/os-hosts/compute2", {"maintenance_mode": "disable"})
        finally:
            self.api.microversion = "latest"

        # compute1's host is empty now: removing it from the aggregate ejects it.
        self.api.remove_host_from_aggregate(agg["id"], "compute1")
        self._reconcile(1)
        meta = self._metadata(agg["id"])
        self.assertEqual("active", meta["operational_state"], meta)
        self.assertEqual({hosts[0].uuid, hosts[2].uuid}, self._pool_of(hosts[0]))
        self.assertEqual({hosts[1].uuid}, self._pool_of(hosts[1]))
        # the pool's server still runs
        self.assertEqual(("Running", hosts[0].uuid), self._vm(server)[:2])
