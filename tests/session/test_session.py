"""XenAPISession against a real XML-RPC XAPI endpoint on loopback.

The client side is the real ``XenAPI`` SDK from PyPI; the server is the
minimal fake in ``fake_xapi.py`` (replaced by the simulator later). Nothing
here is mocked: logins, redirects, session expiry and timeouts all happen on
real sockets.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
import traceback

import pytest

from tests.session.fake_xapi import FakePool, black_hole, closed_port
from xenapi_driver import exception
from xenapi_driver.session import XenAPISession

PASSWORD = "correct-horse-battery"


def _session(pool: FakePool, member: int = 0, **kwargs) -> XenAPISession:
    return XenAPISession(pool.url(member), pool.username, pool.password, **kwargs)


def _bounded(fn, limit: float = 15.0):
    """Run ``fn`` in a thread; fail (not hang) if it does not return within ``limit``."""
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit)
    assert not thread.is_alive(), f"did not finish within {limit} s"
    return outcome


def _wait_for(predicate, limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def _all_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)) + repr(exc) + str(getattr(exc, "params", ""))


# ------------------------------------------------------------------ login


def test_login_finds_managed_host_and_calls(pool):
    session = _session(pool, concurrent=2)
    try:
        assert session.host_ref == pool.host_ref(0)
        assert session.host_address == "127.0.0.1"
        assert session.host_uuid == pool.hosts[pool.host_ref(0)]["uuid"]
        assert session.master_url.startswith(pool.url(0))
        assert session.call_xenapi("VM.get_name_label", pool.vm_ref) == "vm-1"
        (info,) = pool.sessions.values()
        assert info["user"] == "root"
        assert info["originator"] == "xenapi-driver"
        assert PASSWORD not in repr(session)
    finally:
        session.close()
    assert pool.live_sessions == 0


def test_wrong_password_names_url_and_user_never_the_password(pool, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = "Wr0ng-Secret-Value"
    outcome = _bounded(lambda: XenAPISession(pool.url(0), "root", wrong))
    exc = outcome["error"]
    assert isinstance(exc, exception.XenAPILoginError)
    assert exc.code == "SESSION_AUTHENTICATION_FAILED"
    text = str(exc)
    assert pool.url(0) in text
    assert "'root'" in text
    assert "connection_password" in text  # says what to fix
    for secret in (wrong, PASSWORD):
        assert secret not in _all_text(exc)
        assert secret not in caplog.text
    assert pool.live_sessions == 0


def test_password_never_logged_during_normal_life(pool, caplog):
    caplog.set_level(logging.DEBUG)
    session = _session(pool)
    session.call_xenapi("VM.get_record", pool.vm_ref)
    pool.restart_toolstack()
    session.call_xenapi("VM.get_record", pool.vm_ref)  # re-login path
    session.call_plugin("dom0_plugin_version", "get_version", {})
    session.close()
    assert caplog.records, "expected debug logging from the session"
    assert PASSWORD not in caplog.text
    for record in caplog.records:
        assert PASSWORD not in repr(record.args)


def test_closed_port_gives_clear_error_quickly():
    url = f"http://127.0.0.1:{closed_port()}"
    outcome = _bounded(lambda: XenAPISession(url, "root", PASSWORD, login_timeout=2))
    exc = outcome["error"]
    assert isinstance(exc, exception.XenAPIUnreachableError)
    assert isinstance(exc, exception.XenAPILoginError)
    assert exc.code == "CONNECTION_FAILED"
    assert url in str(exc) and "'root'" in str(exc)
    assert "connection refused" in str(exc)
    assert PASSWORD not in _all_text(exc)


def test_black_hole_times_out_within_login_timeout():
    with black_hole() as sock:
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        outcome = _bounded(lambda: XenAPISession(url, "root", PASSWORD, login_timeout=0.3), limit=10)
    exc = outcome["error"]
    assert isinstance(exc, exception.XenAPIUnreachableError)
    assert exc.code == "CONNECTION_TIMEOUT"
    assert url in str(exc)
    assert "login_timeout" in str(exc)
    assert PASSWORD not in _all_text(exc)


def test_url_must_be_http_or_https():
    with pytest.raises(exception.ConfigurationError, match="connection_url"):
        XenAPISession("ftp://host", "root", PASSWORD)
    with pytest.raises(exception.ConfigurationError, match="connection_url is not set"):
        XenAPISession("", "root", PASSWORD)
    with pytest.raises(exception.ConfigurationError) as info:
        XenAPISession("xen://root:pw-in-url@host", "root", PASSWORD)
    assert "pw-in-url" not in str(info.value)


# ------------------------------------------------------------- redirects


def test_host_is_slave_redirects_to_master_and_keeps_managed_host(pool):
    session = _session(pool, member=1)
    try:
        assert session.master_url.startswith(pool.url(0))
        assert session.url == pool.url(1)
        assert session.host_ref == pool.host_ref(1)
        assert session.host_address == "127.0.0.2"
        assert session.host_uuid == pool.hosts[pool.host_ref(1)]["uuid"]
        # Every session lives on the master; plug-ins run on the managed member.
        assert all(info["host"] == pool.host_ref(0) for info in pool.sessions.values())
        session.call_plugin("dom0_plugin_version", "get_version", {})
        assert pool.plugin_calls[-1] == (pool.host_ref(1), "dom0_plugin_version", "get_version")
        assert session.call_xenapi("VM.get_name_label", pool.vm_ref) == "vm-1"
    finally:
        session.close()
    assert pool.live_sessions == 0


# ------------------------------------------------------------------ pool


def test_pool_exhaustion_and_release_under_20_threads(pool):
    session = _session(pool, concurrent=3)
    pool.gated_method = "VM.get_name_label"
    pool.gate.clear()
    results: list[str] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            results.append(session.call_xenapi("VM.get_name_label", pool.vm_ref))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(20)]
    for thread in threads:
        thread.start()
    try:
        _wait_for(lambda: pool.in_flight == 3)
        # The other 17 callers are blocked in the session pool, not on the server.
        time.sleep(0.2)
        assert pool.in_flight == 3
        assert pool.live_sessions == 3
        assert results == []
    finally:
        pool.gate.set()
    for thread in threads:
        thread.join(20)
        assert not thread.is_alive()
    assert errors == []
    assert results == ["vm-1"] * 20
    assert pool.max_in_flight == 3
    assert pool.logins == 3
    assert len(pool.sessions_seen) == 3
    session.close()
    assert pool.live_sessions == 0
    assert pool.logouts == 3


def test_session_invalid_logs_in_again_and_retries_once(pool):
    session = _session(pool)
    try:
        assert session.get_rec("VM", pool.vm_ref)["name_label"] == "vm-1"
        before = pool.logins
        pool.restart_toolstack()
        assert pool.live_sessions == 0
        assert session.get_rec("VM", pool.vm_ref)["name_label"] == "vm-1"
        assert pool.logins == before + 1
        assert pool.live_sessions == 1

        # A session that is invalid again straight after re-login: one retry only.
        pool.always_invalid_method = "VM.get_record"
        before = pool.logins
        with pytest.raises(exception.XenAPIError) as info:
            session.get_rec("VM", pool.vm_ref)
        assert info.value.code == "SESSION_INVALID"
        assert pool.logins == before + 1
    finally:
        session.close()
    assert pool.live_sessions == 0


def test_close_logs_out_every_session_including_busy_ones(pool):
    session = _session(pool, concurrent=4)
    pool.gated_method = "VM.get_name_label"
    pool.gate.clear()
    threads = [
        threading.Thread(target=session.call_xenapi, args=("VM.get_name_label", pool.vm_ref), daemon=True)
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    _wait_for(lambda: pool.in_flight == 4)
    assert pool.live_sessions == 4
    session.close()  # all four are busy: they are logged out when released
    pool.gate.set()
    for thread in threads:
        thread.join(10)
        assert not thread.is_alive()
    assert pool.live_sessions == 0
    assert pool.logouts == pool.logins == 4
    with pytest.raises(exception.XenAPISessionClosed):
        session.call_xenapi("VM.get_name_label", pool.vm_ref)


def test_context_manager_closes(pool):
    with _session(pool) as session:
        session.call_xenapi("host.get_all")
    assert pool.live_sessions == 0


# ----------------------------------------------------------------- calls


def test_typed_errors_carry_code_and_params(pool):
    with _session(pool) as session:
        with pytest.raises(exception.XenAPIError) as info:
            session.call_xenapi("VM.nonexistent_message", pool.vm_ref)
        assert info.value.code == "MESSAGE_METHOD_UNKNOWN"
        assert info.value.params == ["VM.nonexistent_message"]
        assert info.value.details == ["MESSAGE_METHOD_UNKNOWN", "VM.nonexistent_message"]
        pool.vms[pool.vm_ref]["power_state"] = "Halted"
        with pytest.raises(exception.XenAPIError) as info:
            session.call_xenapi("VM.clean_shutdown", pool.vm_ref)
        assert info.value.code == "VM_BAD_POWER_STATE"
        assert info.value.params == [pool.vm_ref, "running", "halted"]


def test_get_rec_tolerates_vanished_object_and_records_where(pool):
    with _session(pool) as session:
        assert session.get_rec("VM", "OpaqueRef:00000000-0000-0000-0000-000000000000") is None
        assert session.get_rec("VM", pool.vm_ref)["uuid"] == pool.vms[pool.vm_ref]["uuid"]
        assert list(session.get_all_records_where("VM", 'field "power_state"="Running"')) == [pool.vm_ref]
        assert session.get_all_records_where("VM", 'field "power_state"="Halted"') == {}


def test_call_async_success_failure_and_timeout(pool):
    with _session(pool) as session:
        clone = session.call_async("VM.clone", pool.vm_ref, "copy")
        assert clone in pool.vms and clone.startswith("OpaqueRef:")
        assert pool.vms[clone]["name_label"] == "copy"
        assert session.call_async("VM.clean_shutdown", pool.vm_ref, timeout=10) is None
        with pytest.raises(exception.XenAPIError) as info:
            session.call_async("VM.clean_shutdown", pool.vm_ref, timeout=10)
        assert info.value.code == "VM_BAD_POWER_STATE"
        assert pool.tasks == {}  # finished tasks are destroyed

        pool.vms[clone].update(name_label="slow", power_state="Running")
        outcome = _bounded(lambda: session.call_async("VM.clean_shutdown", clone, timeout=0.3))
        exc = outcome["error"]
        assert isinstance(exc, exception.XenAPITaskTimeout)
        assert exc.code == "TASK_TIMEOUT"
        (task,) = pool.tasks.values()
        _wait_for(lambda: task["status"] == "cancelled")


def test_call_plugin_and_serialized_json(pool):
    with _session(pool) as session:
        assert session.call_plugin("dom0_plugin_version", "get_version") == "1.2"
        got = session.call_plugin_serialized("echo", "echo_json", 1, "two", sizes=[1, 2], opts={"a": None})
        assert got == {"received": {"args": [1, "two"], "sizes": [1, 2], "opts": {"a": None}}}


def test_plugin_version_handshake(pool):
    with _session(pool, member=1) as session:
        assert session.check_plugin_version("1.0") == "1.2"
        assert session.check_plugin_version("1.2") == "1.2"
        for required in ("1.3", "2.0", "0.9"):
            with pytest.raises(exception.XenAPIPluginVersionError) as info:
                session.check_plugin_version(required)
            assert info.value.code == "PLUGIN_VERSION_MISMATCH"
            assert "127.0.0.2" in str(info.value)  # names the managed host
            assert required in str(info.value)
        del pool.plugins["dom0_plugin_version"]
        with pytest.raises(exception.XenAPIPluginVersionError) as info:
            session.check_plugin_version("1.0")
        assert info.value.code == "XENAPI_MISSING_PLUGIN"
        assert "127.0.0.2" in str(info.value) and "install-plugins" in str(info.value)


def test_from_conf(pool):
    from oslo_config import cfg

    from xenapi_driver import conf as xconf

    conf = cfg.ConfigOpts()
    xconf.register_opts(conf)
    conf([], project="nova", default_config_files=[])
    with pytest.raises(exception.ConfigurationError, match="connection_url is not set"):
        XenAPISession.from_conf(conf)
    conf.set_override("connection_url", pool.url(1), group="xenserver")
    conf.set_override("connection_password", pool.password, group="xenserver")
    conf.set_override("connection_concurrent", 2, group="xenserver")
    conf.set_override("originator", "nova-compute-test", group="xenserver")
    with XenAPISession.from_conf(conf) as session:
        assert session.host_ref == pool.host_ref(1)
        assert next(iter(pool.sessions.values()))["originator"] == "nova-compute-test"
    assert pool.live_sessions == 0


# ------------------------------------------------------------------- TLS


@pytest.fixture
def tls_pool(tmp_path):
    import ssl

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    proc = subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    if proc.returncode != 0:
        pytest.skip(f"openssl cannot make a test certificate: {proc.stderr!r}")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    fake = FakePool(members=1, tls=ctx)
    try:
        yield fake, str(cert)
    finally:
        fake.stop()


def test_tls_verifies_by_default_and_honours_ca_file_and_insecure(tls_pool):
    pool, cert = tls_pool
    outcome = _bounded(lambda: _session(pool, login_timeout=5))
    exc = outcome["error"]
    assert isinstance(exc, exception.XenAPIUnreachableError)
    assert exc.code == "TLS_VERIFICATION_FAILED"
    assert "ca_file" in str(exc) and pool.url(0) in str(exc)
    with _session(pool, ca_file=cert) as session:
        assert session.call_xenapi("VM.get_name_label", pool.vm_ref) == "vm-1"
    with _session(pool, insecure=True) as session:
        assert session.call_xenapi("VM.get_name_label", pool.vm_ref) == "vm-1"
    with pytest.raises(exception.ConfigurationError, match="ca_file"):
        _session(pool, ca_file="/nonexistent/ca.pem")
    assert pool.live_sessions == 0


# ------------------------------------------------------ pool master moves


def test_master_moves_calls_follow_it(pool):
    session = _session(pool, member=1)  # manages the member 127.0.0.2
    try:
        assert session.master_url.startswith(pool.url(0))
        pool.designate_new_master(1)
        assert session.call_xenapi("VM.get_name_label", pool.vm_ref) == "vm-1"
        assert session.master_url.startswith(pool.url(1))
        assert session.host_ref == pool.host_ref(1)
        session.call_plugin("dom0_plugin_version", "get_version", {})
        assert pool.plugin_calls[-1][0] == pool.host_ref(1)
    finally:
        session.close()
    assert pool.live_sessions == 0


def test_standalone_host_joins_a_pool_and_is_still_managed(pool):
    pool.designate_new_master(0)
    session = _session(pool, member=0)  # 127.0.0.1, the master for now
    try:
        managed_uuid = session.host_uuid
        old_ref = session.host_ref
        # Our host joins the pool of 127.0.0.2: its toolstack restarts, refs change.
        pool.rejoin_as_new_pool(master=1)
        assert session.call_xenapi("VM.get_name_label", pool.vm_ref) == "vm-1"
        assert session.master_url.startswith(pool.url(1))
        assert session.host_uuid == managed_uuid
        assert session.host_address == "127.0.0.1"
        assert session.host_ref == pool.host_ref(0) != old_ref
        session.call_plugin("dom0_plugin_version", "get_version", {})
        assert pool.plugin_calls[-1][0] == pool.host_ref(0)
    finally:
        session.close()
    assert pool.live_sessions == 0


def test_required_plugin_version_matches_the_shipped_plugins():
    """The driver's requirement must be met by the plug-ins in this tree."""
    import re
    from pathlib import Path

    from xenapi_driver.session import REQUIRED_PLUGIN_VERSION

    utils = Path(__file__).resolve().parents[2] / "plugins" / "xapi.d" / "plugins" / "dom0_utils.py"
    if not utils.exists():
        pytest.skip("dom0 plug-ins not in this tree yet")
    shipped = re.search(r'^PLUGIN_VERSION = "([^"]+)"', utils.read_text(), re.M).group(1)
    have = tuple(int(x) for x in shipped.split("."))
    need = tuple(int(x) for x in REQUIRED_PLUGIN_VERSION.split("."))
    assert have[0] == need[0] and have[1] >= need[1], (shipped, REQUIRED_PLUGIN_VERSION)


def test_call_timeout_bounds_a_hung_call_and_the_session_recovers(pool):
    with _session(pool, call_timeout=0.3) as session:
        pool.gated_method = "VM.get_name_label"
        pool.gate.clear()
        outcome = _bounded(lambda: session.call_xenapi("VM.get_name_label", pool.vm_ref))
        exc = outcome["error"]
        assert isinstance(exc, exception.XenAPIConnectionError)
        assert exc.code == "CONNECTION_TIMEOUT" and "VM.get_name_label" in str(exc)
        pool.gate.set()
        assert session.call_xenapi("VM.get_name_label", pool.vm_ref) == "vm-1"
