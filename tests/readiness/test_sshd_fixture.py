"""The loopback sshd fixture behaves like a host: it answers, reboots and gets reinstalled."""

from __future__ import annotations

import os
import socket
import time

import paramiko
import pytest


def _connect(server, known_hosts_path) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.load_host_keys(str(known_hosts_path))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(
        server.host,
        port=server.port,
        username=server.username,
        key_filename=server.client_key_path,
        timeout=10,
        banner_timeout=10,
        auth_timeout=10,
        look_for_keys=False,
        allow_agent=False,
    )
    return client


def test_key_login_and_command(sshd, tmp_path):
    known_hosts = sshd.write_known_hosts(tmp_path / "known_hosts")
    client = _connect(sshd, known_hosts)
    try:
        _, stdout, _ = client.exec_command("echo hello", timeout=10)
        assert stdout.read() == b"hello\n"
        assert stdout.channel.recv_exit_status() == 0
    finally:
        client.close()


def test_restart_keeps_port_and_key(sshd, tmp_path):
    port, fingerprint = sshd.port, sshd.host_key_fingerprint
    sshd.restart()
    assert (sshd.port, sshd.host_key_fingerprint) == (port, fingerprint)
    _connect(sshd, sshd.write_known_hosts(tmp_path / "known_hosts")).close()


def test_regenerated_host_key_is_refused_by_old_known_hosts(sshd, tmp_path):
    old_known_hosts = sshd.write_known_hosts(tmp_path / "old_known_hosts")
    old = sshd.host_key_fingerprint
    sshd.regenerate_host_key()
    assert sshd.running and sshd.host_key_fingerprint != old
    try:
        _connect(sshd, old_known_hosts).close()
    except paramiko.BadHostKeyException:
        pass
    else:
        raise AssertionError("a changed host key was accepted")


def test_stop_refuses_connections(sshd):
    sshd.stop()
    assert not sshd.running
    assert not sshd._answers_banner()


def _pids_running(command_line: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    if handle.read().replace(b"\0", b" ").strip() == command_line.encode():
                        found.append(int(entry))
            except OSError:
                pass
    return found


def test_stop_kills_what_sessions_left_running(sshd, tmp_path):
    """A reboot ends everything, even a daemonised process whose session is gone."""
    client = _connect(sshd, sshd.write_known_hosts(tmp_path / "known_hosts"))
    marker = "sleep 271.5"
    try:
        _, stdout, _ = client.exec_command(
            f"setsid nohup {marker} >/dev/null 2>&1 < /dev/null & echo ok", timeout=10
        )
        assert stdout.read() == b"ok\n"
    finally:
        client.close()
    deadline = time.monotonic() + 10
    while not _pids_running(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _pids_running(marker)
    sshd.stop()
    deadline = time.monotonic() + 10
    while _pids_running(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _pids_running(marker)


def test_frozen_server_accepts_tcp_but_sends_no_banner(sshd):
    sshd.freeze()
    try:
        with socket.create_connection((sshd.host, sshd.port), timeout=5) as sock:
            sock.settimeout(0.5)
            with pytest.raises(TimeoutError):
                sock.recv(64)
    finally:
        sshd.thaw()
    assert sshd._answers_banner()
