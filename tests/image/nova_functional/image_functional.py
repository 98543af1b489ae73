"""Images and snapshots end to end through Nova's REST API (Nova's in-process functional harness).

Runs like ``tests/nova`` (``python -m xenapi_nova_tests._runner`` in a child
interpreter; see ``tests/nova/README.md``): the API, conductor, scheduler and
one nova-compute with ``compute_driver = xenapi.XenAPIDriver`` on the XAPI
simulator. Instead of the harness's in-memory GlanceFixture (which keeps no
image data), Nova talks to the loopback Glance v2 server of
``tests/image/glance_api.py`` through its real glanceclient, so image bytes
really flow: a server boots from a VHD chain image, is snapshotted, and a
second server booted from the snapshot has the first one's disk bytes.
The compute runs ``XenAPIDriver`` itself, with its own image layer
(:class:`xenapi_driver.image.XenAPIImageSource`).
"""

from __future__ import annotations

import time
import unittest
from pathlib import Path

import xenapi_nova_tests  # noqa: F401  (first: Nova's concurrency mode)
from glance_api import GlanceAPI
from image_helpers import MiB, chain_tgz, make_chain, pattern
from nova.image import glance as nova_glance
from nova.tests.functional import integrated_helpers
from xenapi_nova_tests import API_PASTE_INI, tolerate_newer_dependencies, xenapi_suite_skip_reason
from xenapi_nova_tests.simulator_fixture import XenServerConfFixture, add_network, start_simulator

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
        cls.glance_server = GlanceAPI(token=None)

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
