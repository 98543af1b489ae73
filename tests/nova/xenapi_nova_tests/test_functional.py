"""Nova in-process, driven through its REST API: the functional proof of issue 6.

Nova's functional harness (``_IntegratedTestBase``) starts the API (through
Paste and wsgi-intercept), conductor, scheduler and one nova-compute in this
process, with the placement fixture, fake Neutron/Glance/Cinder and SQLite.
``FakeDriverServerLifecycleTest`` runs the lifecycle on Nova's own fake
driver, proving the harness; ``XenAPIDriverServerLifecycleTest`` runs the same
steps with ``compute_driver = xenapi.XenAPIDriver`` on the XAPI simulator and
also checks the XAPI VM after every step.
"""

from __future__ import annotations

import unittest
from typing import Any

from nova.tests.functional import integrated_helpers

from xenapi_nova_tests import (
    API_PASTE_INI,
    tolerate_newer_dependencies,
    xenapi_suite_skip_reason,
)
from xenapi_nova_tests.simulator_fixture import (
    XenServerConfFixture,
    add_network,
    prepare_driver,
    start_simulator,
)


class _ServerLifecycle:
    """Boot, stop, start, reboot, pause, suspend, rescue and delete one server.

    A mixin (not a TestCase) so that the loader runs it only through the
    concrete classes below.
    """

    # Placement-based assertions want an admin view of providers and servers.
    ADMIN_API = True
    # networks="none" needs 2.37 or later.
    microversion = "latest"

    def _setup_services(self) -> None:
        # Nova's wheel lacks etc/nova/api-paste.ini, the ConfFixture default
        # ($pybasedir/etc/nova/api-paste.ini); use ours. Set here because the
        # harness's setUp starts the API right after its fixtures.
        self.flags(api_paste_config=str(API_PASTE_INI), group="wsgi")
        tolerate_newer_dependencies()
        self._configure_compute_driver()
        super()._setup_services()

    def _configure_compute_driver(self) -> None:
        """Subclasses point Nova at their driver; the default is Nova's fake."""

    def _assert_backend(self, server: dict[str, Any], status: str) -> None:
        """Subclasses check the hypervisor's view of ``server`` after each step."""

    def _action(self, server: dict[str, Any], body: dict[str, Any], status: str) -> dict[str, Any]:
        self.api.post_server_action(server["id"], body)
        server = self._wait_for_state_change(server, status)
        self._assert_backend(server, status)
        return server

    def test_server_lifecycle(self) -> None:
        flavor = self.api.get_flavors()[0]
        flavor = self.api.get_flavor(flavor["id"])
        # One Neutron port (the fixture's OVS port on br-int).
        port = self.neutron.port_1
        server = self._create_server(flavor_id=flavor["id"], networks=[{"port": port["id"]}])
        self._assert_backend(server, "ACTIVE")
        # The compute node provider is named after the driver's node name.
        rp_uuid = self._get_provider_uuid_by_host(server["OS-EXT-SRV-ATTR:hypervisor_hostname"])
        self.assertFlavorMatchesUsage(rp_uuid, flavor)
        self.assertFlavorMatchesAllocation(flavor, server["id"], rp_uuid)

        server = self._action(server, {"os-stop": None}, "SHUTOFF")
        server = self._action(server, {"os-start": None}, "ACTIVE")
        server = self._action(server, {"reboot": {"type": "SOFT"}}, "ACTIVE")
        server = self._action(server, {"reboot": {"type": "HARD"}}, "ACTIVE")
        server = self._action(server, {"pause": None}, "PAUSED")
        server = self._action(server, {"unpause": None}, "ACTIVE")
        server = self._action(server, {"suspend": None}, "SUSPENDED")
        server = self._action(server, {"resume": None}, "ACTIVE")
        server = self._action(server, {"rescue": {"adminPass": "rescue-secret"}}, "RESCUE")
        server = self._action(server, {"unrescue": None}, "ACTIVE")

        # The periodic resource update must not disturb placement.
        self._run_periodics()
        self.assertFlavorMatchesUsage(rp_uuid, flavor)

        self._delete_server(server)
        self.notifier.wait_for_versioned_notifications("instance.delete.end")
        self._assert_backend(server, "DELETED")
        self.assertRequestMatchesUsage({"VCPU": 0, "MEMORY_MB": 0, "DISK_GB": 0}, rp_uuid)
        self.assertEqual({}, self._get_allocations_by_server_uuid(server["id"]))


class FakeDriverServerLifecycleTest(_ServerLifecycle, integrated_helpers._IntegratedTestBase):
    """The harness itself, on Nova's ``fake.SmallFakeDriver`` (ConfFixture's default)."""


# Nova's server status -> XAPI power_state of the instance's VM.
_XAPI_POWER_STATE = {
    "ACTIVE": "Running",
    "SHUTOFF": "Halted",
    "PAUSED": "Paused",
    "SUSPENDED": "Suspended",
    # In rescue the instance's own VM is halted and a rescue VM runs.
    "RESCUE": "Halted",
}


@unittest.skipIf(xenapi_suite_skip_reason(), xenapi_suite_skip_reason())
class XenAPIDriverServerLifecycleTest(_ServerLifecycle, integrated_helpers._IntegratedTestBase):
    """The same lifecycle on XenAPIDriver, checking XAPI after each step."""

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

    def _configure_compute_driver(self) -> None:
        self.simulator.reset()
        # The XenServer network behind Neutron's OVS bridge (operator setup).
        add_network(self.simulator, "br-int")
        self.useFixture(XenServerConfFixture(self, self.simulator))
        self.flags(compute_driver="xenapi.XenAPIDriver")

    def _setup_services(self) -> None:
        super()._setup_services()
        for compute in self.computes.values():
            prepare_driver(compute.manager.driver)

    def _xapi(self) -> Any:
        import XenAPI

        host = self.simulator.pools[0].hosts[0]
        session = XenAPI.Session(host.url)
        session.xenapi.login_with_password(
            self.simulator.username, self.simulator.password, "1.0", "xenapi-driver-tests"
        )
        self.addCleanup(session.xenapi.session.logout)
        return session

    def _assert_backend(self, server: dict[str, Any], status: str) -> None:
        session = self._xapi()
        records = session.xenapi.VM.get_all_records()
        mine = {
            ref: rec
            for ref, rec in records.items()
            if rec["other_config"].get("nova_uuid") == server["id"] and not rec["is_a_template"]
        }
        if status == "DELETED":
            self.assertEqual({}, mine, "the instance's VMs must be gone after delete")
            return
        instance_vms = [rec for rec in mine.values() if not rec["other_config"].get("nova_rescue")]
        self.assertEqual(1, len(instance_vms), f"expected one VM for {server['id']}: {mine}")
        self.assertEqual(_XAPI_POWER_STATE[status], instance_vms[0]["power_state"])
        macs = [session.xenapi.VIF.get_MAC(ref) for ref in instance_vms[0]["VIFs"]]
        self.assertEqual([self.neutron.port_1["mac_address"]], macs)
        rescue_vms = [rec for rec in mine.values() if rec["other_config"].get("nova_rescue")]
        self.assertEqual(status == "RESCUE", bool(rescue_vms))
