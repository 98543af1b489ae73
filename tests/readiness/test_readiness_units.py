"""Host-key bookkeeping, deadlines and back-off: the parts every phase leans on."""

from __future__ import annotations

import subprocess

import paramiko
import pytest

from tests.sshd import SSH_KEYGEN, LoopbackSSHServer
from xenapi_driver.readiness import (
    Backoff,
    Deadline,
    ExitCode,
    HostKeyMismatch,
    HostKeyVerifier,
    HostReadiness,
    ReadinessTimeout,
    fingerprint,
    poll_until,
)


def _key(tmp_path, name="k"):
    path = tmp_path / name
    subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True, timeout=30)
    return paramiko.PKey.from_path(str(path)), str(path) + ".pub"


def test_fingerprint_matches_ssh_keygen(tmp_path):
    key, pub = _key(tmp_path)
    listed = subprocess.run(
        [SSH_KEYGEN, "-l", "-E", "sha256", "-f", pub], check=True, capture_output=True, text=True, timeout=30
    ).stdout.split()[1]
    assert fingerprint(key) == listed


def test_replacing_a_key_keeps_other_lines_and_hashed_entries(tmp_path):
    old, _ = _key(tmp_path, "old")
    new, _ = _key(tmp_path, "new")
    other, _ = _key(tmp_path, "other")
    name = "[10.0.0.5]:2222"
    hashed = paramiko.HostKeys.hash_host(name)
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(
        "# managed by CI\n"
        f"{hashed} {old.get_name()} {old.get_base64()}\n"
        f"{name},10.0.0.5 {old.get_name()} {old.get_base64()}\n"
        f"otherhost {other.get_name()} {other.get_base64()}\n"
        f"@cert-authority *.example {other.get_name()} {other.get_base64()}\n"
    )
    verifier = HostKeyVerifier(known_hosts, accept_new_host_key=False)
    with pytest.raises(HostKeyMismatch) as caught:
        verifier.verify("10.0.0.5", 2222, new)
    assert caught.value.expected_fingerprint == fingerprint(old)
    assert caught.value.actual_fingerprint == fingerprint(new)
    assert verifier.verify("10.0.0.5", 2222, old).status == "known"

    outcome = HostKeyVerifier(known_hosts, accept_new_host_key=True).verify("10.0.0.5", 2222, new)
    assert (outcome.status, outcome.previous_fingerprint) == ("replaced", fingerprint(old))
    lines = known_hosts.read_text().splitlines()
    assert lines[0] == "# managed by CI"
    assert f"otherhost {other.get_name()} {other.get_base64()}" in lines
    assert any(line.startswith("@cert-authority") for line in lines)
    assert lines[-1] == f"{name} {new.get_name()} {new.get_base64()}"
    assert not any(old.get_base64() in line for line in lines)  # hashed and plain old entries gone
    # what we wrote is read back by paramiko (and so by OpenSSH's format rules)
    assert HostKeyVerifier(known_hosts).verify("10.0.0.5", 2222, new).status == "known"


def test_revoked_key_is_refused_even_when_listed(tmp_path):
    key, _ = _key(tmp_path)
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(
        f"h {key.get_name()} {key.get_base64()}\n"
        f"@revoked * {key.get_name()} {key.get_base64()}\n"
        "not a key line\n"
    )
    with pytest.raises(HostKeyMismatch, match="@revoked"):
        HostKeyVerifier(known_hosts, accept_new_host_key=True).verify("h", 22, key)


def test_first_use_is_recorded(tmp_path):
    key, _ = _key(tmp_path)
    known_hosts = tmp_path / "sub" / "known_hosts"
    assert HostKeyVerifier(known_hosts).verify("h", 22, key).status == "new"
    assert known_hosts.read_text() == f"h {key.get_name()} {key.get_base64()}\n"


def test_known_rsa_host_is_not_mistaken_for_changed(tmp_path):
    """The server offers ed25519 and RSA; only RSA is recorded. The RSA key must be negotiated."""
    with LoopbackSSHServer(workdir=tmp_path / "sshd", extra_host_key_types=("rsa",)) as server:
        rsa_pub = open(server.extra_host_key_paths["rsa"] + ".pub").read().split()
        known_hosts = tmp_path / "known_hosts"
        known_hosts.write_text(f"{server.known_hosts_name} {rsa_pub[0]} {rsa_pub[1]}\n")
        result = HostReadiness(
            server.host, server.port, server.username, server.client_key_path, known_hosts=known_hosts,
            reject_unknown_host_key=True, connect_timeout=5,
        ).wait_ready(None, timeout=10, interval=0.1)  # fmt: skip
    assert result.ok, result.detail
    assert result.host_key_fingerprint != server.host_key_fingerprint  # it was the RSA one


def test_backoff_grows_caps_and_resets():
    delays = Backoff(1.0, 2.0, 5.0)
    assert [delays.next_delay() for _ in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    delays.reset()
    assert delays.next_delay() == 1.0
    for bad in ((0, 1.5, None), (1, 0.5, None), (2, 1.5, 1)):
        with pytest.raises(ValueError):
            Backoff(*bad)


def test_deadline_bounds_every_wait():
    now = [100.0]
    deadline = Deadline(10, clock=lambda: now[0])
    assert deadline.bound(30) == 10
    now[0] = 107.5
    assert deadline.bound(30) == 2.5 and not deadline.expired
    now[0] = 111
    assert deadline.bound(30) == 0 and deadline.expired and deadline.remaining == 0


def test_poll_until_for_non_ssh_signals():
    calls = []
    assert poll_until(lambda: calls.append(1) or len(calls) == 3, timeout=10, interval=0.01) >= 0
    assert len(calls) == 3
    with pytest.raises(ReadinessTimeout, match="pool member back"):
        poll_until(lambda: False, timeout=0.05, interval=0.01, what="pool member back")


def test_exit_codes_are_the_documented_ones():
    assert [int(c) for c in ExitCode] == [0, 1, 2, 3, 4]
