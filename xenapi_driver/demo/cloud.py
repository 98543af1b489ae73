"""Nova in this process, with ``compute_driver = xenapi.XenAPIDriver`` on two computes.

The demo reuses Nova 34's own functional-test harness from its wheel
(``nova.tests.functional.integrated_helpers._IntegratedTestBase``): the REST
API (Paste + wsgi-intercept, no TCP port), conductor, scheduler, placement
(``openstack-placement``), in-memory SQLite databases and fake Neutron,
Cinder and Glance. That is what a demo needs and nothing more; a real cloud
runs each service on its own, with RabbitMQ and MySQL. Everything XAPI-side
is real: the driver, its XAPI sessions over HTTP, the plug-ins in the
simulated dom0s, VHD files on the simulated SRs.

Import this module only after :func:`prepare_nova` (Nova picks its
concurrency mode on the first import of its test packages).
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import io
import logging
import os
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

#: A minimal Paste deployment of Nova 34's compute API (Nova's wheel lacks
#: etc/nova/api-paste.ini). The harness stubs keystonemiddleware and Nova's
#: Keystone context, so no Keystone is needed.
API_PASTE = """\
[composite:osapi_compute]
use = call:nova.api.openstack.urlmap:urlmap_factory
/: compute_versions
/v2.1: compute_version_v21
/v2.1/+: compute_api_v21

[composite:compute_api_v21]
use = call:nova.api.auth:pipeline_factory_v21
keystone = compute_req_id faultwrap request_log sizelimit authtoken keystonecontext compute_app_v21

[app:compute_app_v21]
paste.app_factory = nova.api.openstack.compute:APIRouterV21.factory

[pipeline:compute_versions]
pipeline = faultwrap request_log compute_versions_app

[pipeline:compute_version_v21]
pipeline = compute_req_id faultwrap request_log compute_version_v2_app

[app:compute_versions_app]
paste.app_factory = nova.api.openstack.compute.versions:Versions.factory

[app:compute_version_v2_app]
paste.app_factory = nova.api.openstack.compute.versions:VersionsV2.factory

[filter:compute_req_id]
paste.filter_factory = nova.api.compute_req_id:ComputeReqIdMiddleware.factory

[filter:faultwrap]
paste.filter_factory = nova.api.openstack:FaultWrapper.factory

[filter:request_log]
paste.filter_factory = nova.api.openstack.requestlog:RequestLog.factory

[filter:sizelimit]
paste.filter_factory = oslo_middleware:RequestBodySizeLimiter.factory

[filter:authtoken]
paste.filter_factory = keystonemiddleware.auth_token:filter_factory

[filter:keystonecontext]
paste.filter_factory = nova.api.auth:NovaKeystoneContext.factory
"""


#: What Nova's harness imports beyond Nova itself (Nova's test requirements).
HARNESS_MODULES = (
    "nova.tests.functional.integrated_helpers",  # oslotest, testtools, fixtures
    "nova.tests.functional.fixtures",  # openstack-placement
    "wsgi_intercept",  # the API fixture
)


class HarnessMissing(RuntimeError):
    """Nova's functional-test harness (or one of its test requirements) is not installed."""


def prepare_nova(log_path: Path) -> None:
    """Choose Nova's concurrency mode (native threads) before anything imports eventlet.

    Also sends Nova's process-wide logging (``nova.test`` sets up oslo.log on
    stdout when imported) to ``log_path``, so nothing from Nova reaches the
    terminal outside the harness's own log capture.
    """
    # Native threads, Nova 34's nova-compute default, whatever the caller's environment says.
    os.environ["OS_NOVA_DISABLE_EVENTLET_PATCHING"] = "1"
    try:
        import nova.tests.functional  # noqa: F401  (first: runs nova.monkey_patch.patch())

        importlib.import_module("nova.test")  # sets up oslo.log on stdout
        for name in HARNESS_MODULES:
            importlib.import_module(name)
    except ImportError as exc:
        raise HarnessMissing(
            f"the demo runs Nova's own functional-test harness, which needs the Python module "
            f"{exc.name or exc}; install the driver's test extra into this environment "
            "(pip install 'xenapi-driver[test]'), or run ./run demo from a checkout"
        ) from None
    import nova.virt

    # oslo.log's set-up also routes uncaught exceptions to the log: keep them on the terminal.
    sys.excepthook = sys.__excepthook__
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)
    file_handler = logging.FileHandler(log_path, encoding="utf-8")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(name)s] %(message)s"))
    file_handler.setLevel(logging.INFO)
    root.addHandler(file_handler)

    from nova import objects

    objects.register_all()
    # ``xenapi.XenAPIDriver`` is nova/virt/xenapi, the shim pip installs into
    # Nova's tree. Running from a checkout that was not installed, use the
    # checkout's copy of the same file.
    if importlib.util.find_spec("nova.virt.xenapi") is None:
        checkout = Path(__file__).resolve().parents[2] / "nova" / "virt"
        if (checkout / "xenapi" / "__init__.py").exists():
            nova.virt.__path__.append(str(checkout))


def _node_uuids(driver: Any, refresh: bool = False) -> dict[str, str]:
    """``{node uuid: node name}``, the node UUID being the XenServer host's (demo only)."""
    return {driver._session.host_uuid: driver.get_available_nodes(refresh=refresh)[0]}


def _with_node_uuid(original: Any) -> Any:
    def get_available_resource(driver: Any, nodename: str) -> dict[str, Any]:
        resources = original(driver, nodename)
        resources.setdefault("uuid", driver._session.host_uuid)
        return resources

    return get_available_resource


class _DataGlance:
    """Gives Nova's in-memory Glance fixture image data in both directions.

    Nova's ``GlanceFixture`` keeps image records but returns no bytes from
    ``download()`` without a file and drops uploaded bytes. The image layer
    streams both ways (``vdi_remote_stream``), so the fixture instance gets
    these two methods.
    """

    CHUNK = 1024 * 1024

    def __init__(self, fixture: Any) -> None:
        self.fixture = fixture
        self.uploaded: dict[str, int] = {}
        original_download, original_update = fixture.download, fixture.update

        def download(context, image_id, data=None, dst_path=None, trusted_certs=None):
            if data is not None or dst_path is not None:
                return original_download(
                    context, image_id, data=data, dst_path=dst_path, trusted_certs=trusted_certs
                )
            fixture.show(context, image_id)
            blob = fixture._imagedata.get(image_id, b"")
            return iter([blob[i : i + self.CHUNK] for i in range(0, len(blob), self.CHUNK)])

        def update(context, image_id, metadata, data=None, purge_props=False):
            result = original_update(context, image_id, metadata, data=None, purge_props=purge_props)
            if data is not None:
                if hasattr(data, "read"):
                    blob = data.read()
                else:
                    blob = b"".join(data)
                fixture._imagedata[image_id] = blob
                self.uploaded[image_id] = len(blob)
                result["size"] = len(blob)
                result["status"] = "active"
            return result

        fixture.download = download
        fixture.update = update

    def add(self, name: str, data: bytes, disk_format: str, container_format: str) -> str:
        meta = {
            "name": name,
            "disk_format": disk_format,
            "container_format": container_format,
            "visibility": "public",
            "size": len(data),
            "min_disk": 0,
            "min_ram": 0,
            "properties": {"os_type": "linux", "vm_mode": "hvm"},
        }
        return self.fixture.create(None, meta, data=io.BytesIO(data))["id"]

    def uploaded_bytes(self) -> int:
        return sum(self.uploaded.values())

    def image(self, image_id: str) -> dict[str, Any] | None:
        return self.fixture.images.get(image_id)


class NovaCloud:
    """Nova's services in this process, one nova-compute per simulated host.

    ``hosts`` are the simulator's hosts; ``sim`` gives their credentials.
    Build with :meth:`start`, tear down with :meth:`stop` (runs every cleanup
    the harness registered: services stopped, fixtures undone).
    """

    def __init__(self, hosts: list[Any], username: str, password: str, workdir: Path) -> None:
        self.hosts = hosts
        self.username = username
        self.password = password
        self.workdir = workdir
        self.case: Any = None
        self.glance: _DataGlance | None = None
        self.computes: dict[str, Any] = {}
        self.final_log = ""
        #: Set when the demo is interrupted: waits for the server give up at once.
        self.stopping = threading.Event()

    def start(self) -> None:
        from nova.tests.functional import integrated_helpers

        paste = self.workdir / "api-paste.ini"
        paste.write_text(API_PASTE, encoding="utf-8")
        cloud = self

        class DemoNova(integrated_helpers._IntegratedTestBase):
            ADMIN_API = True
            microversion = "latest"

            def runTest(self) -> None:  # noqa: N802 - unittest's name; never run
                """Not a test: the harness is used for its services only."""

            def _setup_services(self) -> None:
                self.flags(api_paste_config=str(paste), group="wsgi")
                # Nova 34 itself triggers this SQLAlchemy 2.1 deprecation, which
                # the harness's WarningsFixture would turn into API errors.
                from sqlalchemy import exc as sqla_exc

                warnings.filterwarnings(
                    "ignore",
                    message=r"The noload\(\) option is deprecated",
                    category=sqla_exc.SADeprecationWarning,
                )
                from xenapi_driver import conf as xconf

                xconf.register_opts(xconf.CONF)
                self.flags(compute_driver="xenapi.XenAPIDriver")
                self.flags(
                    connection_username=cloud.username,
                    connection_password=cloud.password,
                    # Glance here is Nova's in-memory fixture, which dom0 cannot
                    # reach: nova-compute streams images through XAPI's HTTP.
                    image_handler="vdi_remote_stream",
                    cache_images="none",
                    # The simulated dom0s run no sshd here, so resize copies
                    # VHD chains over XAPI's HTTP disk handlers, not rsync.
                    migration_transport="xapi",
                    vhd_coalesce_poll_interval=0.0,
                    group="xenserver",
                )
                # The watcher's long poll bounds how long a stopping compute lingers.
                self.stub_out("xenapi_driver.driver.XenAPIDriver.EVENT_POLL_TIMEOUT", 1.0)
                # A real nova-compute keeps its node's UUID in its own
                # compute_id file; two computes in one process would share
                # Nova's process-wide cache of it, so each compute node here
                # is identified by its XenServer host's UUID instead.
                from xenapi_driver.driver import XenAPIDriver

                self.stub_out("xenapi_driver.driver.XenAPIDriver.get_nodenames_by_uuid", _node_uuids)
                self.stub_out(
                    "xenapi_driver.driver.XenAPIDriver.get_available_resource",
                    _with_node_uuid(XenAPIDriver.get_available_resource),
                )
                super()._setup_services()

            def _setup_compute_service(self) -> Any:
                first = None
                for host in cloud.hosts:
                    # Each driver connects in init_host, reading connection_url
                    # then: point it at this compute's own XenServer host.
                    self.flags(connection_url=host.url, group="xenserver")
                    compute = self._start_compute(host.name)
                    cloud.computes[host.name] = compute
                    first = first or compute
                return first

        self.case = DemoNova("runTest")
        try:
            self.case.setUp()
        except BaseException:
            self.stop()
            raise
        self.glance = _DataGlance(self.case.glance)

    def stop(self) -> None:
        """Stop every service and undo every fixture; then end Nova's idle worker threads."""
        case, self.case = self.case, None
        if case is None:
            return
        # Keep the run's log: the harness captured it in memory.
        with contextlib.suppress(Exception):
            (self.workdir / "nova.log").write_text(case.stdlog.logger.output, encoding="utf-8")
        self.final_log = case.stdlog.logger.output
        case.doCleanups()
        from nova import thread_pool_factory

        thread_pool_factory.reset_all_executors()
        del case
        self.computes.clear()
        gc.collect()  # futurist workers stop once their executor is collected

    # -- conveniences -------------------------------------------------------------------
    @property
    def api(self) -> Any:
        return self.case.api

    def driver(self, host_name: str) -> Any:
        return self.computes[host_name].manager.driver

    def drivers(self) -> list[Any]:
        return [c.manager.driver for c in self.computes.values()]

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def log_text(self) -> str:
        return self.case.stdlog.logger.output if self.case is not None else self.final_log

    def wait_server(self, server_id: str, timeout: float, **expected: Any) -> dict[str, Any]:
        """Poll the REST API until the server has ``expected`` fields (status=..., etc.)."""
        deadline = time.monotonic() + timeout
        server: dict[str, Any] = {}
        while time.monotonic() < deadline:
            if self.stopping.is_set():
                raise StepError("interrupted")
            server = self.api.get_server(server_id)
            if server.get("status") == "ERROR" and expected.get("status") != "ERROR":
                raise StepError(f"the server went to ERROR: {fault_message(server)}")
            if all(server.get(k) == v for k, v in expected.items()):
                return server
            time.sleep(0.2)
        shown = {k: server.get(k) for k in expected}
        raise StepError(f"timed out after {timeout:.0f} s waiting for {expected} (server has {shown})")

    def wait_gone(self, server_id: str, timeout: float) -> None:
        from nova.tests.functional.api import client as api_client

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.stopping.is_set():
                raise StepError("interrupted")
            try:
                server = self.api.get_server(server_id)
            except api_client.OpenStackApiNotFoundException:
                return
            if server.get("status") == "ERROR":
                raise StepError(f"delete failed: {fault_message(server)}")
            time.sleep(0.2)
        raise StepError(f"the server was not deleted within {timeout:.0f} s")


class StepError(RuntimeError):
    """A demo step did not reach its expected result."""


def fault_message(server: dict[str, Any]) -> str:
    fault = server.get("fault") or {}
    return fault.get("message") or "no fault recorded"
