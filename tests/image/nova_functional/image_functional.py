"""Images and snapshots end to end through Nova's REST API (Nova's in-process functional harness).

Runs like ``tests/nova`` (``python -m xenapi_nova_tests._runner`` in a child
interpreter; see ``tests/nova/README.md``): the API, conductor, scheduler and
one nova-compute with ``compute_driver = xenapi.XenAPIDriver`` on the XAPI
simulator. Instead of the harness's in-memory GlanceFixture (which keeps no
image data), Nova talks to the loopback Glance v2 server of
``tests/glance_server.py`` through its real glanceclient, so image bytes
really flow: a server boots from a VHD chain image, is snapshotted, and a
second server booted from the snapshot has the first one's disk bytes; and
servers boot from a plain VHD, a raw disk and an ISO (a read-only bootable CD
beside a blank root disk), each deleted again leaving only the image cache's
entries in the SR.
The compute runs ``XenAPIDriver`` itself, with its own image layer
(:class:`xenapi_driver.image.XenAPIImageSource`).
"""

from __future__ import annotations

import time
import unittest
from pathlib import Path

import xenapi_nova_tests  # noqa: F401  (first: Nova's concurrency mode)
from image_helpers import MiB, chain_tgz, make_chain, pattern, plain_vhd, raw_disk
from nova.image import glance as nova_glance
from nova.tests.functional import integrated_helpers
from xenapi_nova_tests import API_PASTE_INI, tolerate_newer_dependencies, xenapi_suite_skip_reason
from xenapi_nova_tests.simulator_fixture import XenServerConfFixture, add_network, start_simulator

from tests.glance_server import GlanceServer
from xenapi_driver import vhd

_REAL_DEFAULT_IMAGE_SERVICE = nova_glance.get_default_image_service


@unittest.skipIf(xenapi_suite_skip_reason(), xenapi_suite_skip_reason())
class ImageSnapshotRESTTest(integrated_helpers._IntegratedTestBase):
    ADMIN_API = True
    microversion = "latest"
    simulator = None
    glance_server = None

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls.simulator = start_simulator(hosts=1)
        cls.glance_server = GlanceServer(token=None)

    @classmethod
    def tearDownClass(cls) -> None:
        if cls.simulator is not None:
            cls.simulator.stop()
        if cls.glance_server is not None:
            cls.glance_server.stop()
        super().tearDownClass()

    def _setup_services(self) -> None:
        self.flags(api_paste_config=str(API_PASTE_INI), group="wsgi")
        tolerate_newer_dependencies()
        self.simulator.reset()
        add_network(self.simulator, "br-int")
        self.useFixture(XenServerConfFixture(self, self.simulator))
        self.flags(compute_driver="xenapi.XenAPIDriver")
        self.flags(image_handler="vdi_remote_stream", cache_images="all", group="xenserver")
        self.flags(vhd_coalesce_poll_interval=0.1, group="xenserver")
        # Real glanceclient against the loopback Glance instead of the in-memory fixture.
        self.flags(api_servers=[self.glance_server.endpoint], group="glance")
        self.stub_out("nova.image.glance.get_default_image_service", _REAL_DEFAULT_IMAGE_SERVICE)
        # The harness authenticates nobody (noauth2): give Nova's Glance client a token of its own.
        from keystoneauth1 import token_endpoint

        token = token_endpoint.Token(self.glance_server.endpoint, "functional-token")
        self.stub_out("nova.service_auth.get_service_user_token_auth_plugin", lambda context: token)
        super()._setup_services()

    def _root(self, server_id: str) -> tuple[Path, dict]:
        db = self.simulator.pools[0].db
        for vm in db.all("VM"):
            rec = db.get("VM", vm)
            if rec["other_config"].get("nova_uuid") == server_id and not rec["other_config"].get(
                "nova_rescue"
            ):
                for vbd in rec["VBDs"]:
                    if db.get("VBD", vbd)["userdevice"] == "0":
                        vdi = db.get("VDI", db.get("VBD", vbd)["VDI"])
                        host = self.simulator.pools[0].hosts[0]
                        sr_uuid = db.get("SR", vdi["SR"])["uuid"]
                        return host.sr_path(sr_uuid) / f"{vdi['uuid']}.vhd", vdi
        raise AssertionError(f"no root disk for {server_id}")

    def _vbds(self, server_id: str) -> dict[str, dict]:
        """The server's VBD records by userdevice (its one non-rescue VM)."""
        db = self.simulator.pools[0].db
        vms = [
            db.get("VM", vm)
            for vm in db.all("VM")
            if db.get("VM", vm)["other_config"].get("nova_uuid") == server_id
        ]
        self.assertEqual(1, len(vms), f"VMs of {server_id}")
        return {db.get("VBD", v)["userdevice"]: db.get("VBD", v) for v in vms[0]["VBDs"]}

    def _sr_contents(self, sr_ref: str) -> tuple[dict[str, dict], set[str]]:
        """The SR's VDI records by uuid and every path under its directory (staging areas too)."""
        db = self.simulator.pools[0].db
        vdis = {db.get("VDI", r)["uuid"]: db.get("VDI", r) for r in db.get("SR", sr_ref)["VDIs"]}
        sr_dir = self.simulator.pools[0].hosts[0].sr_path(db.get("SR", sr_ref)["uuid"])
        return vdis, {str(p.relative_to(sr_dir)) for p in sr_dir.rglob("*")}

    def _boot_check_delete(self, name: str, image_id: str, check) -> None:
        """Boot ``image_id`` through the API, run ``check(vbds)``, delete; the SR keeps only the cache."""
        db = self.simulator.pools[0].db
        sr_ref = db.get("pool", db.all("pool")[0])["default_SR"]
        vdis_before, files_before = self._sr_contents(sr_ref)
        flavor = self.api.get_flavors()[0]
        server = self._create_server(name=name, image_uuid=image_id, flavor_id=flavor["id"], networks="none")
        self.assertEqual("ACTIVE", server["status"])
        check(self._vbds(server["id"]))
        self._delete_server(server)
        self.assertEqual(
            [],
            [r for r in db.all("VM") if db.get("VM", r)["other_config"].get("nova_uuid") == server["id"]],
        )
        # XenServer's storage GC deletes a destroyed leaf's file in the background; the
        # simulator runs it on SR.scan, so scan (through the real SDK) before looking at files.
        self._scan(sr_ref)
        vdis_after, files_after = self._sr_contents(sr_ref)
        new = {u: rec for u, rec in vdis_after.items() if u not in vdis_before}
        # What may stay is the image cache's entry for this image (by design) and the hidden,
        # unmanaged base copies under it that XAPI's VDI.clone leaves on a file SR; nothing else.
        kept = {u for u, rec in new.items() if rec["other_config"].get("nova_image_cache") == image_id}
        for u in list(kept):
            parent = vdis_after[u]["sm_config"].get("vhd-parent")
            while parent in vdis_after and not vdis_after[parent]["managed"]:
                kept.add(parent)
                parent = vdis_after[parent]["sm_config"].get("vhd-parent")
        self.assertEqual(
            {},
            {u: (rec["name_label"], rec["other_config"]) for u, rec in new.items() if u not in kept},
            f"{name}: VDIs left in the SR",
        )
        self.assertTrue(kept, f"{name}: no image cache entry kept (cache_images = all)")
        lost = {u for u, rec in vdis_before.items() if rec["managed"] and u not in vdis_after}
        self.assertEqual(set(), lost, f"{name}: VDIs lost")
        stray = files_after - files_before - {f"{u}.vhd" for u in vdis_after}
        self.assertEqual(set(), stray, f"{name}: files left in the SR")

    def _scan(self, sr_ref: str) -> None:
        import XenAPI

        host = self.simulator.pools[0].hosts[0]
        session = XenAPI.Session(host.url)
        session.xenapi.login_with_password(self.simulator.username, self.simulator.password, "1.0", "test")
        try:
            session.xenapi.SR.scan(sr_ref)
        finally:
            session.xenapi.session.logout()

    def _vdi_bytes(self, vbd: dict, length: int) -> bytes:
        db = self.simulator.pools[0].db
        vdi = db.get("VDI", vbd["VDI"])
        sr_dir = self.simulator.pools[0].hosts[0].sr_path(db.get("SR", vdi["SR"])["uuid"])
        with vhd.open_chain(str(sr_dir / f"{vdi['uuid']}.vhd"), writable=False) as chain:
            return chain.read(0, length)

    def _disk(self, server_id: str, length: int) -> bytes:
        path, _ = self._root(server_id)
        with vhd.open_chain(str(path), writable=False) as chain:
            return chain.read(0, length)

    def test_boot_snapshot_boot(self) -> None:
        import shutil
        import tempfile

        work = Path(tempfile.mkdtemp(prefix="image-functional-"))
        self.addCleanup(shutil.rmtree, work, True)
        paths, expected = make_chain(work, size=8 * MiB, depth=2)
        image_id = self.glance_server.add(chain_tgz(paths), "vhd", "ovf")
        flavor = self.api.get_flavors()[0]
        server = self._create_server(
            image_uuid=image_id, flavor_id=flavor["id"], networks=[{"port": self.neutron.port_1["id"]}]
        )
        self.assertEqual(expected, self._disk(server["id"], len(expected)))

        # The guest changes its disk; the snapshot must carry the change.
        path, _ = self._root(server["id"])
        with vhd.open_chain(str(path)) as chain:
            chain.write(6 * MiB, pattern("guest-write", 256 * 1024))
        at_snapshot = self._disk(server["id"], len(expected))

        response = self.api.post_server_action(server["id"], {"createImage": {"name": "snap-1"}})
        snap_id = response["image_id"]
        deadline = time.monotonic() + 60
        while self.glance_server.images.get(snap_id, {}).get("status") != "active":
            self.assertLess(time.monotonic(), deadline, "snapshot image never became active")
            time.sleep(0.1)
        server = self._wait_for_server_parameter(server, {"OS-EXT-STS:task_state": None})

        second = self._create_server(
            name="from-snapshot",
            image_uuid=snap_id,
            flavor_id=flavor["id"],
            networks="none",
        )
        self.assertEqual(at_snapshot, self._disk(second["id"], len(expected)))
        # No temporary snapshot VDI is left behind.
        db = self.simulator.pools[0].db
        self.assertEqual([], [r for r in db.all("VDI") if db.get("VDI", r)["is_a_snapshot"]])

    def test_boot_from_each_image_format(self) -> None:
        import shutil
        import tempfile

        work = Path(tempfile.mkdtemp(prefix="image-functional-"))
        self.addCleanup(shutil.rmtree, work, True)

        data, expected = plain_vhd(work / "plain", size=4 * MiB)
        vhd_id = self.glance_server.add(data, "vhd", "bare")

        def vhd_root(vbds: dict[str, dict]) -> None:
            self.assertEqual("Disk", vbds["0"]["type"])
            self.assertEqual(expected, self._vdi_bytes(vbds["0"], len(expected)))

        self._boot_check_delete("plain-vhd", vhd_id, vhd_root)

        raw = raw_disk(4 * MiB)
        raw_id = self.glance_server.add(raw, "raw", "bare")

        def raw_root(vbds: dict[str, dict]) -> None:
            self.assertEqual("Disk", vbds["0"]["type"])
            self.assertEqual(raw, self._vdi_bytes(vbds["0"], len(raw)))

        self._boot_check_delete("raw", raw_id, raw_root)

        iso = pattern("iso", 2 * MiB)
        iso_id = self.glance_server.add(iso, "iso", "bare")

        def iso_cd(vbds: dict[str, dict]) -> None:
            cds = [v for v in vbds.values() if v["type"] == "CD"]
            self.assertEqual(1, len(cds), vbds)
            cd = cds[0]
            self.assertEqual(("RO", True), (cd["mode"], cd["bootable"]))
            self.assertEqual(iso, self._vdi_bytes(cd, len(iso)))
            root = vbds["0"]
            self.assertEqual(("Disk", "RW", False), (root["type"], root["mode"], root["bootable"]))
            self.assertEqual(bytes(len(iso)), self._vdi_bytes(root, len(iso)))

        self._boot_check_delete("iso", iso_id, iso_cd)
