"""The simulated guest agent speaks XenServer's XenStore agent protocol."""

import json
import secrets
import subprocess

import pytest

from xenapi_driver.simulator.guest_agent import (
    DH_BASE,
    DH_PRIME,
    GuestAgents,
    XenStore,
    XenStoreError,
    decrypt_password,
    encrypt_password,
)


def ask(store, domid, request_id, name, value=""):
    store.write(f"/local/domain/{domid}/data/host/{request_id}", json.dumps({"name": name, "value": value}))
    reply_path = f"/local/domain/{domid}/data/guest/{request_id}"
    assert store.wait(reply_path, timeout=5)
    reply = json.loads(store.read(reply_path))
    store.rm(reply_path)
    return reply


def test_xenstore_tree_semantics():
    store = XenStore()
    store.write("/local/domain/3/vm-data/hostname", "web")
    assert store.read("/local/domain/3/vm-data") == ""
    assert store.ls("/local/domain") == ["3"]
    assert store.ls("/local/domain/3") == ["vm-data"]
    assert store.list("/local/domain/3") == {
        "/local/domain/3": "",
        "/local/domain/3/vm-data": "",
        "/local/domain/3/vm-data/hostname": "web",
    }
    store.rm("/local/domain/3")
    assert not store.exists("/local/domain/3/vm-data/hostname")
    with pytest.raises(XenStoreError):
        store.read("/local/domain/3")
    with pytest.raises(XenStoreError):
        store.write("relative/path", "x")


def test_version_key_exchange_password_and_resetnetwork():
    store = XenStore()
    agents = GuestAgents(store)
    agents.domain_started(7)
    assert ask(store, 7, "r1", "version") == {"returncode": "0", "message": "1.0.0"}
    private = secrets.randbits(80)
    reply = ask(store, 7, "r2", "key_init", str(pow(DH_BASE, private, DH_PRIME)))
    assert reply["returncode"] == "D0"
    shared = str(pow(int(reply["message"]), private, DH_PRIME))
    assert ask(store, 7, "r3", "password", encrypt_password("s3cret\n", shared)) == {
        "returncode": "0",
        "message": "",
    }
    assert agents.state(7).password == "s3cret"
    assert "s3cret" not in repr(agents.state(7))
    assert ask(store, 7, "r4", "resetnetwork")["returncode"] == "0"
    assert agents.state(7).resetnetwork_calls == 1
    assert ask(store, 7, "r5", "frobnicate")["message"].startswith("NOT IMPLEMENTED")
    # The request key is consumed like the real agent does.
    assert store.ls("/local/domain/7/data/host") == []


def test_password_with_wrong_key_is_refused():
    store = XenStore()
    agents = GuestAgents(store)
    agents.domain_started(2)
    ask(store, 2, "k", "keyinit", str(pow(DH_BASE, 12345, DH_PRIME)))
    reply = ask(store, 2, "p", "password", encrypt_password("pw", "999"))
    assert reply["returncode"] == "500" and agents.state(2).password is None


def test_switched_off_agent_never_answers():
    store = XenStore()
    agents = GuestAgents(store)
    agents.domain_started(4, agent=False)
    store.write("/local/domain/4/data/host/x", json.dumps({"name": "version", "value": ""}))
    assert not store.wait("/local/domain/4/data/guest/x", timeout=0.05)
    agents.domain_started(5)
    agents.enabled = False
    store.write("/local/domain/5/data/host/y", json.dumps({"name": "version", "value": ""}))
    assert not store.exists("/local/domain/5/data/guest/y")


@pytest.mark.parametrize("md", ["sha256", "md5"])
def test_decrypts_what_the_openssl_cli_encrypts(md):
    out = subprocess.run(
        ["openssl", "aes-128-cbc", "-A", "-a", "-nosalt", "-md", md, "-pass", "pass:424242"],
        input=b"hunter2\n",
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout.decode()
    assert decrypt_password(out.strip(), "424242") == "hunter2\n"
