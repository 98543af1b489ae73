"""The driver the pool functional test loads: XenAPIDriver plus test-only parts.

Loaded by Nova as ``compute_driver = xenapi_pool_testdriver.PoolTestDriver``
(this directory is put on ``nova.virt.__path__``). Pool reconciling, Nova-aware
maintenance mode and live migration are XenAPIDriver's own; this subclass adds
only what a single test process needs: each compute's VM UUID (in production
``[xenserver] compute_vm_uuid`` or ``/sys/hypervisor/uuid``) and per-compute
node UUIDs (five computes in one process).
"""

import uuid

from xenapi_driver.driver import XenAPIDriver


def _node_uuid(nodename):
    return str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{nodename}.xenapi-pool-test"))


class PoolTestDriver(XenAPIDriver):
    """What the functional test loads: the driver plus test-only parts."""

    #: compute service host -> UUID of the VM it "runs in" (set by the test;
    #: in production ``[xenserver] compute_vm_uuid`` or ``/sys/hypervisor/uuid``).
    compute_vm_uuids: dict = {}

    def init_host(self, host):
        super().init_host(host)
        self._pool._compute_vm_uuid = self.compute_vm_uuids.get(host)

    # Nova caches ONE local node UUID per process (one compute per process in
    # production); five computes share this process, so each gets its own.

    def get_nodenames_by_uuid(self, refresh=False):
        nodename = self.get_available_nodes(refresh=refresh)[0]
        return {_node_uuid(nodename): nodename}

    def get_available_resource(self, nodename):
        resources = super().get_available_resource(nodename)
        resources["uuid"] = _node_uuid(nodename)
        return resources
