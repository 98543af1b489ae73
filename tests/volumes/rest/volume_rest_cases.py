"""Volumes, boot from volume, admin password and consoles through Nova's REST API, on the simulator.

Run under stdlib unittest in a child interpreter (tests/volumes/test_volumes_rest.py), like
tests/nova's groups: Nova's functional harness (API, conductor, scheduler, one
nova-compute) with its Cinder fixture answering ``connection_info`` for
simulated iSCSI targets. The compute loads ``xenapi.XenAPIDriver`` by name.
"""

from __future__ import annotations

import unittest
import urllib.parse
from typing import Any

import xenapi_nova_tests  # noqa: F401  (first: Nova's concurrency mode)

# isort: split

import fixtures
from nova.tests.functional import integrated_helpers
from xenapi_nova_tests import API_PASTE_INI, tolerate_newer_dependencies, xenapi_suite_skip_reason
from xenapi_nova_tests.simulator_fixture import (
    XenServerConfFixture,
    add_network,
    prepare_driver,
    start_simulator,
)

from xenapi_driver import volume_utils as vu
from xenapi_driver.simulator import sr_backend
from xenapi_driver.simulator.handlers import xenstore

MiB = 1024**2
VOL_HOT = "2a1f3c5e-0b7d-4e8a-9c61-5d0e7f3a1b01"
VOL_COLD = "2a1f3c5e-0b7d-4e8a-9c61-5d0e7f3a1b02"
GiB = 1024**3
PASSWORD = "Rest-Adm1n-Pa55"


@unittest.skipIf(xenapi_suite_skip_reason(), xenapi_suite_skip_reason())
class VolumeAgentConsoleRestTest(integrated_helpers._IntegratedTestBase):
    ADMIN_API = True
    microversion = "latest"
    simulator = None

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls.simulator = start_simulator(hosts=1)

    @classmethod
    def tearDownClass(cls) -> None:
        if cls.simulator is not None:
            cls.simulator.stop()
        super().tearDownClass()

    def _setup_services(self) -> None:
        self.flags(api_paste_config=str(API_PASTE_INI), group="wsgi")
        tolerate_newer_dependencies()
        self.simulator.reset()
        add_network(self.simulator, "br-int")
        self.useFixture(XenServerConfFixture(self, self.simulator))
        self.flags(compute_driver="xenapi.XenAPIDriver")
        self.flags(use_agent_default=True, group="xenserver")
        # Cinder: each volume is LUN 0 of its own simulated target.
        self.iqns = {}
        infos = dict(self.cinder.VOLUME_CONNECTION_INFO)
        fixture = type(self.cinder)
        for volume_id in (
            VOL_HOT,
            VOL_COLD,
            fixture.SWAP_OLD_VOL,
            fixture.SWAP_NEW_VOL,
            fixture.IMAGE_BACKED_VOL,
        ):
            iqn = f"iqn.2010-10.org.openstack:volume-{volume_id}"
            sr_backend.create_lun(self.simulator.world.iscsi_root, iqn, 0, 16 * MiB)
            self.iqns[volume_id] = iqn
            infos[volume_id] = {
                "driver_volume_type": "iscsi",
                "data": {"target_portal": "127.0.0.1:3260", "target_iqn": iqn, "target_lun": 0},
            }
        self.useFixture(fixtures.MockPatchObject(type(self.cinder), "VOLUME_CONNECTION_INFO", infos))
        super()._setup_services()
        for compute in self.computes.values():
            prepare_driver(compute.manager.driver)

    # -- XAPI's view ----------------------------------------------------------

    @property
    def _db(self) -> Any:
        return self.simulator.pools[0].db

    def _vm(self, server: dict[str, Any]) -> str:
        db = self._db
        (ref,) = [
            r
            for r in db.all("VM")
            if db.get("VM", r)["other_config"].get("nova_uuid") == server["id"]
            and not db.get("VM", r)["is_a_template"]
        ]
        return ref

    def _volume_vbds(self, server: dict[str, Any]) -> dict[str, dict[str, Any]]:
        db = self._db
        out = {}
        for vbd in db.get("VM", self._vm(server))["VBDs"]:
            rec = db.get("VBD", vbd)
            if rec["other_config"].get("osvol") == "True":
                sr = db.get("SR", db.get("VDI", rec["VDI"])["SR"])
                out[sr["uuid"]] = rec
        return out

    def _sr_uuid(self, volume_id: str) -> str:
        return vu.sr_uuid_for("127.0.0.1", "3260", self.iqns[volume_id])

    def _volume_srs(self) -> list[str]:
        db = self._db
        return [r for r in db.all("SR") if db.get("SR", r)["other_config"].get(vu.VOLUME_SR_KEY) == "true"]

    # -- the test -------------------------------------------------------------

    def test_volumes_password_and_consoles(self) -> None:
        server = self._create_server(networks=[{"port": self.neutron.port_1["id"]}])

        # Hot attach to the running server.
        self._attach_volume(server, VOL_HOT)
        vbds = self._volume_vbds(server)
        self.assertTrue(vbds[self._sr_uuid(VOL_HOT)]["currently_attached"])

        # The admin password reaches the guest agent, decrypted.
        self.api.post_server_action(server["id"], {"changePassword": {"adminPass": PASSWORD}})
        domid = int(self._db.get("VM", self._vm(server))["domid"])
        host = self.simulator.pools[0].hosts[0]
        self.assertEqual(PASSWORD, xenstore.agents_for(host).state(domid).password)

        # Console output (last lines) and the VNC console.
        host.sandbox.path(f"/var/log/xen/guest/console.{domid}").unlink(missing_ok=True)
        host.sandbox.append_console(domid, b"one\ntwo\nthree\nlogin: \n")
        output = self.api.post_server_action(server["id"], {"os-getConsoleOutput": {"length": 2}})
        self.assertEqual("login: \n", output["output"])
        console = self.api.api_post(
            f"/servers/{server['id']}/remote-consoles",
            {"remote_console": {"protocol": "vnc", "type": "novnc"}},
        ).body["remote_console"]
        self.assertEqual("vnc", console["protocol"])
        self.assertIn("token=", urllib.parse.unquote(console["url"]))

        # Cold attach to the stopped server; the volume is plugged when it starts.
        server = self._stop_server(server)
        self._attach_volume(server, VOL_COLD)
        self.assertFalse(self._volume_vbds(server)[self._sr_uuid(VOL_COLD)]["currently_attached"])
        server = self._start_server(server)
        vbds = self._volume_vbds(server)
        self.assertTrue(all(v["currently_attached"] for v in vbds.values()), vbds)
        self.assertEqual(2, len(self._volume_srs()))

        # Detach both; the SRs are forgotten once unused.
        for volume_id in (VOL_HOT, VOL_COLD):
            self.api.delete_server_volume(server["id"], volume_id)
            self._wait_for_volume_detach(server["id"], volume_id)
        self.assertEqual({}, self._volume_vbds(server))
        self.assertEqual([], self._volume_srs())

        self._delete_server(server)
        self.assertEqual([], self._volume_srs())

    def test_boot_from_volume(self) -> None:
        root_volume = self.cinder.IMAGE_BACKED_VOL
        lun = self.simulator.world.iscsi_root / self.iqns[root_volume] / "lun0"
        with open(lun, "r+b") as handle:
            handle.write(b"bootable volume")
        request = self._build_server(networks=[{"port": self.neutron.port_1["id"]}])
        request.pop("imageRef")
        request["block_device_mapping_v2"] = [
            {"source_type": "volume", "destination_type": "volume", "boot_index": 0, "uuid": root_volume}
        ]
        server = self._wait_for_state_change(self.api.post_server({"server": request}), "ACTIVE")

        db = self._db
        vm = self._vm(server)
        (root,) = [
            db.get("VBD", v) for v in db.get("VM", vm)["VBDs"] if db.get("VBD", v)["userdevice"] == "0"
        ]
        self.assertTrue(root["bootable"] and root["currently_attached"])
        self.assertEqual("True", root["other_config"].get("osvol"))
        sr = db.get("SR", db.get("VDI", root["VDI"])["SR"])
        self.assertEqual(self._sr_uuid(root_volume), sr["uuid"])
        # No image disk was made: the only disks are the volume.
        self.assertEqual(["0"], sorted(db.get("VBD", v)["userdevice"] for v in db.get("VM", vm)["VBDs"]))

        self._delete_server(server)
        self.assertEqual([], self._volume_srs())
        with open(lun, "rb") as handle:
            self.assertEqual(b"bootable volume", handle.read(15))

    def _lun(self, volume_id: str):
        return self.simulator.world.iscsi_root / self.iqns[volume_id] / "lun0"

    def test_swap_and_extend(self) -> None:
        # Cinder's volume migration: the fixture reports the old volume as migrating.
        old, new = self.cinder.SWAP_OLD_VOL, self.cinder.SWAP_NEW_VOL
        server = self._create_server(networks=[{"port": self.neutron.port_1["id"]}])
        with open(self._lun(old), "r+b") as handle:
            handle.write(b"data to keep" * 100)
        with open(self._lun(new), "r+b") as handle:
            handle.truncate(32 * MiB)
        self._attach_volume(server, old)

        # Swap (PUT os-volume_attachments/<old> with the new volume): same device, data copied.
        self.api.put_server_volume(server["id"], old, new)
        self._wait_for_volume_attach(server["id"], new)
        vbds = self._volume_vbds(server)
        self.assertEqual([self._sr_uuid(new)], list(vbds))
        new_vbd = vbds[self._sr_uuid(new)]
        self.assertTrue(new_vbd["currently_attached"])
        with open(self._lun(new), "rb") as handle:
            self.assertEqual(b"data to keep" * 100, handle.read(1200))
        self.assertEqual(1, len(self._volume_srs()))  # the old target's SR is forgotten

        # Extend: Cinder grows the LUN (the fixture reports 1 GiB), then tells Nova.
        with open(self._lun(new), "r+b") as handle:
            handle.truncate(GiB)
        self.api.create_server_external_events(
            [{"name": "volume-extended", "server_uuid": server["id"], "tag": new}]
        )
        db = self._db
        vdi = db.get("VDI", self._volume_vbds(server)[self._sr_uuid(new)]["VDI"])
        self.assertEqual(GiB, int(vdi["virtual_size"]))
        self.assertTrue(self._volume_vbds(server)[self._sr_uuid(new)]["currently_attached"])

        self._delete_server(server)
        self.assertEqual([], self._volume_srs())
