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
import unittest
from pathlib import Path
from typing import Any

import resize_down_helpers as rdh
from nova.tests.functional import integrated_helpers
from nova.tests.functional.api import client
from xenapi_nova_tests import xenapi_suite_skip_reason

from nova_resize.test_functional_resize import _Harness

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


class _ResizeDown(_Harness):
    """The tests; a mixin so that unittest's loader runs them only through the classes below.

    The computes, hosts and XAPI-side views are test_functional_resize's
    harness; only the guest disk (real ext4 pieces) and the flavors differ.
    """

    workdir: Path

    @classmethod
    def setUpClass(cls) -> None:
        cls.workdir = Path(tempfile.mkdtemp(prefix="resize-down-"))
        cls.ext4 = rdh.ext4_disk_pieces(cls.workdir, 2 * GiB, FILES)
        super().setUpClass()

    @classmethod
    def tearDownClass(cls) -> None:
        super().tearDownClass()
        shutil.rmtree(cls.workdir, ignore_errors=True)

    def setUp(self) -> None:
        self.pieces = self.ext4
        super().setUp()

    def _image_source(self, driver: Any, pool: Any) -> Any:
        return GuestDiskImageSource(driver._session, pool, self)

    def _create_flavors(self) -> None:
        self.two = self._create_flavor(memory_mb=512, vcpu=1, disk=2, ephemeral=0)
        self.one = self._create_flavor(memory_mb=512, vcpu=1, disk=1, ephemeral=0)

    # -- helpers ------------------------------------------------------------------

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
