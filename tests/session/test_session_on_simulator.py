"""XenAPISession against the project's XAPI simulator (real plug-ins in dom0 sandboxes).

The fake in ``fake_xapi.py`` drives the corner cases; this checks that the
same behaviour holds on the simulator the rest of the project is built on:
redirect from a pool member, the plug-in handshake with the real
``dom0_plugin_version`` plug-in, recovery after a toolstack restart, async
tasks, and no session left behind.
"""

from __future__ import annotations

import ssl
import threading

import pytest

from xenapi_driver import exception
from xenapi_driver.session import XenAPISession

api = pytest.importorskip("xenapi_driver.simulator.api")


@pytest.fixture
def sim():
    simulator = api.start(hosts=2)
    try:
        yield simulator
    finally:
        simulator.stop()


def _live_sessions(sim) -> int:
    db = sim.pool.db
    with db.lock:
        return len(db.all("session"))


def test_member_redirect_handshake_restart_and_no_leak(sim):
    master, member = sim.pool.hosts
    session = XenAPISession(member.url, sim.username, sim.password, concurrent=3)
    try:
        assert session.master_url.rstrip("/") == master.url.rstrip("/")
        assert (session.host_ref, session.host_uuid, session.host_address) == (
            member.ref,
            member.uuid,
            member.address,
        )
        assert session.check_plugin_version() == session.check_plugin_version("1.0")

        sim.restart_toolstack()
        assert session.get_rec("host", session.host_ref)["uuid"] == member.uuid
        assert session.call_async("SR.scan", member.local_sr, timeout=30) is None

        errors: list[BaseException] = []

        def worker() -> None:
            try:
                for _ in range(5):
                    session.call_xenapi("host.get_all_records")
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
            assert not thread.is_alive()
        assert errors == []
        assert _live_sessions(sim) <= 3

        with pytest.raises(exception.XenAPIError) as info:
            session.call_plugin("no_such_plugin", "fn", {})
        assert info.value.code == "XENAPI_MISSING_PLUGIN"
    finally:
        session.close()
    assert _live_sessions(sim) == 0


def test_wrong_password_on_simulator(sim):
    with pytest.raises(exception.XenAPILoginError) as info:
        XenAPISession(sim.url, sim.username, "not-the-password")
    assert sim.url.rstrip("/") in str(info.value)
    assert "not-the-password" not in str(info.value)
    assert _live_sessions(sim) == 0


def test_http_connection_trusts_what_the_session_trusts(tmp_path):
    """Disk streams (VDI import/export) use the session's TLS settings: its ca_file, or insecure."""
    with api.start(hosts=1, https=True) as simulator:
        lax = XenAPISession(simulator.url, simulator.username, simulator.password, insecure=True)
        try:
            ca_file = tmp_path / "xapi-ca.pem"
            ca_file.write_text(lax.call_xenapi("host.get_server_certificate", lax.host_ref))
            verified = XenAPISession(
                simulator.url, simulator.username, simulator.password, ca_file=str(ca_file)
            )
            try:
                for session in (lax, verified):
                    conn = session.http_connection(simulator.url, 10.0)
                    conn.request("GET", "/export_raw_vdi?session_id=OpaqueRef:nobody&vdi=none")
                    assert conn.getresponse().status >= 400  # TLS worked; XAPI refused the request itself
                    conn.close()
                assert verified.ssl_context().verify_mode == ssl.CERT_REQUIRED
            finally:
                verified.close()
        finally:
            lax.close()
