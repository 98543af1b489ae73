"""Sessions: login/logout, errors, HOST_IS_SLAVE, toolstack restart, GC."""

from __future__ import annotations

import xmlrpc.client

import pytest
import XenAPI


def test_login_logout_roundtrip(sim):
    s = XenAPI.Session(sim.url)
    s.xenapi.login_with_password(sim.username, sim.password, "1.0", "test-originator")
    ref = s._session
    assert ref.startswith("OpaqueRef:")
    rec = s.xenapi.session.get_record(ref)
    assert rec["originator"] == "test-originator"
    assert rec["this_host"] == sim.pool.master.ref
    assert rec["auth_user_name"] == "root"
    s.xenapi.session.logout()
    proxy = xmlrpc.client.ServerProxy(sim.url)
    assert proxy.VM.get_all(ref) == {"Status": "Failure", "ErrorDescription": ["SESSION_INVALID", ref]}


def test_login_trailing_defaults_may_be_omitted(sim):
    proxy = xmlrpc.client.ServerProxy(sim.url)
    out = proxy.session.login_with_password(sim.username, sim.password)
    assert out["Status"] == "Success"
    out3 = proxy.session.login_with_password(sim.username, sim.password, "1.0")
    assert out3["Status"] == "Success"
    for r in (out, out3):
        proxy.session.logout(r["Value"])


def test_authentication_failure_hides_password(sim, failure):
    s = XenAPI.Session(sim.url)
    details = failure(s.xenapi.login_with_password, "root", "wrong-secret-pw", "1.0", "t")
    assert details[0] == "SESSION_AUTHENTICATION_FAILED"
    assert details[1] == "root"
    assert len(details) == 3
    assert "wrong-secret-pw" not in " ".join(details)


def test_host_is_slave_on_member_login_and_calls(sim, session, failure):
    member = sim.pool.hosts[1]
    s = XenAPI.Session(member.url)
    assert failure(s.xenapi.login_with_password, "root", sim.password, "1.0", "t") == [
        "HOST_IS_SLAVE",
        sim.pool.master.address,
    ]
    # a master session used against a member
    proxy = xmlrpc.client.ServerProxy(member.url)
    out = proxy.VM.get_all(session._session)
    assert out["ErrorDescription"] == ["HOST_IS_SLAVE", sim.pool.master.address]
    # redirecting as clients do: same scheme and port, the master's address
    redirected = member.url.replace(member.address, sim.pool.master.address)
    s2 = XenAPI.Session(redirected)
    s2.xenapi.login_with_password("root", sim.password, "1.0", "t")
    s2.xenapi.session.logout()


def test_slave_local_login_answers_on_member(sim):
    member = sim.pool.hosts[2]
    proxy = xmlrpc.client.ServerProxy(member.url)
    out = proxy.session.slave_local_login_with_password("root", sim.password)
    assert out["Status"] == "Success"
    ref = out["Value"]
    assert proxy.host.get_record(ref, member.ref)["Value"]["uuid"] == member.uuid
    assert proxy.session.local_logout(ref)["Status"] == "Success"


def test_session_invalid_after_toolstack_restart_and_sdk_relogin(sim):
    s = XenAPI.Session(sim.url)
    s.xenapi.login_with_password(sim.username, sim.password, "1.0", "restart-test")
    before = s._session
    rec = {"name_label": "survives", "name_description": "", "MTU": "1500", "other_config": {},
           "bridge": "", "managed": True, "tags": []}  # fmt: skip
    net = s.xenapi.network.create(rec)
    sim.restart_toolstack()
    proxy = xmlrpc.client.ServerProxy(sim.url)
    assert proxy.VM.get_all(before)["ErrorDescription"] == ["SESSION_INVALID", before]
    # the SDK logs in again by itself; the state survived the restart
    assert s.xenapi.network.get_name_label(net) == "survives"
    assert s._session != before
    s.xenapi.network.destroy(net)
    s.xenapi.session.logout()


def test_session_gc_per_originator(sim):
    table = sim.pool.sessions
    old = dict(table.limits)
    table.limits["originator"] = 5
    try:
        proxy = xmlrpc.client.ServerProxy(sim.url)
        refs = [
            proxy.session.login_with_password("root", sim.password, "1.0", "leaky")["Value"] for _ in range(7)
        ]
        other = proxy.session.login_with_password("root", sim.password, "1.0", "careful")["Value"]
        valid = [r for r in refs if proxy.pool.get_all(r)["Status"] == "Success"]
        assert valid == refs[2:]  # the two oldest-used were collected
        assert proxy.pool.get_all(other)["Status"] == "Success"
        for r in [*valid, other]:
            proxy.session.logout(r)
    finally:
        table.limits.update(old)


def test_session_invalid_for_garbage_ref(sim):
    proxy = xmlrpc.client.ServerProxy(sim.url)
    assert proxy.VM.get_all("OpaqueRef:nope")["ErrorDescription"] == ["SESSION_INVALID", "OpaqueRef:nope"]


@pytest.mark.parametrize("originator", ["", "x"])
def test_session_record_fields(sim, originator):
    proxy = xmlrpc.client.ServerProxy(sim.url)
    ref = proxy.session.login_with_password("root", sim.password, "1.0", originator)["Value"]
    rec = proxy.session.get_record(ref, ref)["Value"]
    assert rec["is_local_superuser"] is True
    assert isinstance(rec["last_active"], xmlrpc.client.DateTime)
    proxy.session.logout(ref)
