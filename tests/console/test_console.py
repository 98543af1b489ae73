"""Console log through the real dom0 ``console`` plug-in, and VNC console fields, on the simulator."""

from __future__ import annotations

import urllib.parse
import xmlrpc.client

import nova.conf
import pytest
from nova.console import type as ctype

from nova import exception as nova_exception
from tests.volumes.guest_helpers import make_instance, make_vm
from xenapi_driver import conf as xconf
from xenapi_driver.console import MAX_CONSOLE_BYTES, ConsoleOps

CONF = nova.conf.CONF


@pytest.fixture
def creds(sim):
    """The console session logs in with the [xenserver] credentials, as the driver is configured."""
    xconf.CONF.set_override("connection_username", sim.username, group="xenserver")
    xconf.CONF.set_override("connection_password", sim.password, group="xenserver")
    CONF.set_override("server_proxyclient_address", "xenserver-1.example.org", group="vnc")
    yield
    xconf.CONF.clear_override("connection_username", group="xenserver")
    xconf.CONF.clear_override("connection_password", group="xenserver")
    CONF.clear_override("server_proxyclient_address", group="vnc")


def _domid(sim, vm):
    return int(sim.pools[0].db.get("VM", vm)["domid"])


def _fresh_log(host, domid):
    """Domain ids can repeat across simulator resets: start each test's log empty."""
    host.sandbox.path(f"/var/log/xen/guest/console.{domid}").unlink(missing_ok=True)


def test_console_output_is_the_log_tail(sim, session, managed_host):
    instance = make_instance()
    vm = make_vm(sim, managed_host, instance, running=True)
    ops = ConsoleOps(session)
    _fresh_log(managed_host, _domid(sim, vm))
    managed_host.sandbox.append_console(_domid(sim, vm), b"Booting...\r\nlogin: \xe9t\xe9\n")
    text = ops.get_console_output(instance)
    assert isinstance(text, str) and text.encode("latin-1") == b"Booting...\r\nlogin: \xe9t\xe9\n"
    big = b"".join(b"line %06d\n" % i for i in range(20000))  # 240 000 bytes
    managed_host.sandbox.append_console(_domid(sim, vm), big)
    out = ops.get_console_output(instance).encode("latin-1")
    assert len(out) == MAX_CONSOLE_BYTES and out == big[-MAX_CONSOLE_BYTES:]


def test_console_output_unavailable(sim, session, managed_host):
    running, stopped = make_instance(), make_instance()
    vm = make_vm(sim, managed_host, running, running=True)
    _fresh_log(managed_host, _domid(sim, vm))  # no log written (yet, or logging disabled)
    make_vm(sim, managed_host, stopped, running=False)
    ops = ConsoleOps(session)
    assert ops.get_console_output(running) == ""
    with pytest.raises(nova_exception.ConsoleNotAvailable):
        ops.get_console_output(stopped)
    with pytest.raises(nova_exception.InstanceNotFound):
        ops.get_console_output(make_instance())


def test_vnc_console(sim, session, managed_host, creds):
    instance = make_instance()
    vm = make_vm(sim, managed_host, instance, running=True)
    ops = ConsoleOps(session)
    try:
        console = ops.get_vnc_console(instance)
        assert isinstance(console, ctype.ConsoleVNC)
        assert console.host == "xenserver-1.example.org"
        db = sim.pools[0].db
        (rfb,) = [c for c in db.get("VM", vm)["consoles"] if db.get("console", c)["protocol"] == "rfb"]
        location = urllib.parse.urlsplit(db.get("console", rfb)["location"])
        assert console.port == location.port
        path = urllib.parse.urlsplit(console.internal_access_path)
        query = dict(urllib.parse.parse_qsl(path.query))
        assert path.path == "/console" and query["uuid"] == db.get("console", rfb)["uuid"]
        # the session id is a live, dedicated session (not one of the driver's pooled ones)
        proxy = xmlrpc.client.ServerProxy(sim.url)
        answer = proxy.session.get_originator(query["session_id"], query["session_id"])
        assert answer["Status"] == "Success" and answer["Value"].endswith("-console")
        assert ops.get_vnc_console(instance).internal_access_path == console.internal_access_path
        # a session XAPI dropped is replaced
        proxy.session.logout(query["session_id"])
        renewed = dict(
            urllib.parse.parse_qsl(
                urllib.parse.urlsplit(ops.get_vnc_console(instance).internal_access_path).query
            )
        )
        assert renewed["session_id"] != query["session_id"]
    finally:
        ops.close()


def test_vnc_console_of_a_stopped_instance(sim, session, managed_host, creds):
    instance = make_instance()
    make_vm(sim, managed_host, instance, running=False)
    with pytest.raises(nova_exception.InstanceNotReady):
        ConsoleOps(session).get_vnc_console(instance)
