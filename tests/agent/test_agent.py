"""The guest agent protocol end to end: AgentOps -> session -> host.call_plugin -> the real dom0
``agent`` plug-in -> the simulator's XenStore -> the simulated guest agent."""

from __future__ import annotations

import logging
import shutil
import subprocess

import pytest

from nova import exception as nova_exception
from nova import objects
from tests.volumes.guest_helpers import make_instance, make_vm
from xenapi_driver import agent
from xenapi_driver import conf as xconf
from xenapi_driver.simulator.guest_agent import decrypt_password
from xenapi_driver.simulator.handlers import xenstore

PASSWORD = "N3w-Adm1n-Passw0rd!"


@pytest.fixture
def opts():
    """Set [xenserver] options for one test."""
    names = []

    def set_(**values):
        for name, value in values.items():
            xconf.CONF.set_override(name, value, group="xenserver")
            names.append(name)

    yield set_
    for name in names:
        xconf.CONF.clear_override(name, group="xenserver")


def _domid(sim, vm):
    return int(sim.pools[0].db.get("VM", vm)["domid"])


def _plugin_calls(sim):
    return sim.call_counts.get("host.call_plugin", 0)


def test_set_admin_password_reaches_the_agent_decrypted(sim, session, managed_host, opts, caplog):
    caplog.set_level(logging.DEBUG)
    opts(use_agent_default=True)
    instance = make_instance()
    vm = make_vm(sim, managed_host, instance, running=True)
    agent.AgentOps(session).set_admin_password(instance, PASSWORD)
    state = xenstore.agents_for(managed_host).state(_domid(sim, vm))
    assert state.password == PASSWORD and state.passwords_set == 1
    assert state.requests[-2:] == ["key_init", "password"]
    assert PASSWORD not in caplog.text


def test_image_property_turns_the_agent_on_and_off(sim, session, managed_host, opts):
    opts(use_agent_default=False)
    on = make_instance(system_metadata={"image_xenapi_use_agent": "true"})
    vm = make_vm(sim, managed_host, on, running=True)
    agent.AgentOps(session).set_admin_password(on, PASSWORD)
    assert xenstore.agents_for(managed_host).state(_domid(sim, vm)).password == PASSWORD
    off = make_instance(system_metadata={"image_xenapi_use_agent": "false"})
    make_vm(sim, managed_host, off, running=True)
    with pytest.raises(nova_exception.InstanceAgentNotEnabled):
        agent.AgentOps(session).set_admin_password(off, PASSWORD)
    meta = objects.ImageMeta.from_dict({"properties": {"xenapi_use_agent": "false"}})
    assert agent.should_use_agent(on, meta) is False


def test_disabled_agent_fails_at_once_without_asking_dom0(sim, session, managed_host, opts):
    opts(disable_agent=True, use_agent_default=True)
    instance = make_instance(system_metadata={"image_xenapi_use_agent": "true"})
    make_vm(sim, managed_host, instance, running=True)
    before = _plugin_calls(sim)
    with pytest.raises(nova_exception.InstanceAgentNotEnabled):
        agent.AgentOps(session).set_admin_password(instance, PASSWORD)
    assert _plugin_calls(sim) == before


def test_guest_without_tools_fails_at_once(sim, session, managed_host, opts):
    opts(use_agent_default=True)
    instance = make_instance()
    make_vm(sim, managed_host, instance, running=True, agent=False)
    before = _plugin_calls(sim)
    with pytest.raises(nova_exception.InstanceAgentNotEnabled):
        agent.AgentOps(session).set_admin_password(instance, PASSWORD)
    assert _plugin_calls(sim) == before


def test_silent_agent_times_out_within_agent_timeout(sim, session, managed_host, opts):
    opts(use_agent_default=True, agent_timeout=1)
    instance = make_instance()
    vm = make_vm(sim, managed_host, instance, running=True)
    agents = xenstore.agents_for(managed_host)
    agents.disabled_domids.add(_domid(sim, vm))  # tools report, but the agent hangs
    with pytest.raises(agent.AgentTimeout) as err:
        agent.AgentOps(session).set_admin_password(instance, PASSWORD)
    assert "key_init" in str(err.value) and PASSWORD not in str(err.value)
    store = xenstore.store_for(managed_host)
    assert not [k for k in store.list(f"/local/domain/{_domid(sim, vm)}") if "/data/host/" in k]


def test_stopped_instance(sim, session, managed_host, opts):
    opts(use_agent_default=True)
    instance = make_instance()
    make_vm(sim, managed_host, instance, running=False)
    with pytest.raises(nova_exception.InstanceNotRunning):
        agent.AgentOps(session).set_admin_password(instance, PASSWORD)


def test_configure_new_instance(sim, session, managed_host, opts):
    opts(use_agent_default=True, agent_version_timeout=5)
    instance = make_instance()
    vm = make_vm(sim, managed_host, instance, running=True)
    ops = agent.AgentOps(session)
    assert ops.agent_version(instance) == "1.0.0"
    ok = ops.configure_new_instance(
        instance,
        None,
        injected_files=[("/etc/motd", b"hello\n"), ("/root/x", "text")],
        admin_password=PASSWORD,
    )
    assert ok
    state = xenstore.agents_for(managed_host).state(_domid(sim, vm))
    assert state.injected_files == {"/etc/motd": b"hello\n", "/root/x": b"text"}
    assert state.password == PASSWORD and state.resetnetwork_calls == 1


def test_configure_new_instance_without_agent_is_quick_and_quiet(sim, session, managed_host, opts):
    opts(use_agent_default=False)
    instance = make_instance()
    make_vm(sim, managed_host, instance, running=True)
    before = _plugin_calls(sim)
    assert agent.AgentOps(session).configure_new_instance(instance, None, admin_password=PASSWORD) is False
    assert _plugin_calls(sim) == before


def test_encryption_matches_openssl():
    shared = 98765432109876543210
    token = agent.encrypt_for_agent(PASSWORD + "\n", shared)
    assert decrypt_password(token, str(shared)) == PASSWORD + "\n"
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl binary to cross-check with")
    out = subprocess.run(
        [
            openssl,
            "enc",
            "-d",
            "-aes-128-cbc",
            "-a",
            "-A",
            "-nosalt",
            "-md",
            "md5",
            "-pass",
            f"pass:{shared}",
        ],
        input=token.encode(),
        capture_output=True,
        timeout=30,
        check=True,
    ).stdout
    assert out.decode() == PASSWORD + "\n"


def test_key_exchange_agrees():
    host, guest = agent.DiffieHellman(), agent.DiffieHellman()
    assert host.shared(guest.public) == guest.shared(host.public)
    with pytest.raises(ValueError):
        host.shared(1)
