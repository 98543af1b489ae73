"""wait-ready against a real sshd that reboots and is reinstalled under it.

The host is a loopback OpenSSH server with its own host key; an installer
thread stops it (reboot), regenerates its host key (reinstall), starts it
again and only then writes the status file. Elapsed-time checks below are
hang guards with a generous margin, not speed claims.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from xenapi_driver.readiness import ExitCode, HostKeyMismatch, HostReadiness, wait_for_host_ready

HANG_MARGIN = 20.0  # seconds past the timeout that would mean "it hung"


def _states(result, phase="wait-ready"):
    return [e["state"] for e in result.events if e["phase"] == phase]


def _checker(server, **kwargs) -> HostReadiness:
    kwargs.setdefault("connect_timeout", 5.0)
    return HostReadiness(server.host, server.port, server.username, server.client_key_path, **kwargs)


@pytest.mark.timeout(60)
def test_ready_at_once_when_status_file_exists(sshd, tmp_path):
    status = tmp_path / "status"
    status.write_text("done")
    known_hosts = sshd.write_known_hosts(tmp_path / "known_hosts")
    result = wait_for_host_ready(
        sshd.host,
        sshd.port,
        sshd.username,
        sshd.client_key_path,
        str(status),
        timeout=10,
        interval=0.1,
        known_hosts=known_hosts,
    )
    assert result.ok and result.exit_code == ExitCode.OK
    assert _states(result) == ["started", "ready"]
    assert result.host_key_fingerprint == sshd.host_key_fingerprint
    for event in result.events:
        assert {"phase", "state", "host", "elapsed", "detail"} <= set(event)
    assert result.events[-1]["exit_code"] == 0


@pytest.mark.timeout(60)
def test_survives_reboot_and_reinstall_with_accept(sshd, tmp_path, installer_factory):
    status = str(tmp_path / "status")
    known_hosts = sshd.write_known_hosts(tmp_path / "known_hosts")
    old_fingerprint = sshd.host_key_fingerprint
    events = []
    checker = _checker(sshd, known_hosts=known_hosts, accept_new_host_key=True, on_event=events.append)
    installer = installer_factory(sshd, status)
    with checker:
        result = checker.wait_ready(status, timeout=30, interval=0.1, backoff=1.5, max_interval=0.5)
    installer.finish()
    assert result.ok, result.detail
    states = _states(result)
    assert states[0] == "started" and states[-1] == "ready"
    # each phase of the host's life is reported, in order
    for expected in ("waiting", "unreachable", "host-key-replaced"):
        assert expected in states, states
    assert states.index("waiting") < states.index("unreachable") < states.index("host-key-replaced")
    replaced = next(e for e in result.events if e["state"] == "host-key-replaced")
    assert replaced["previous_fingerprint"] == old_fingerprint
    assert replaced["fingerprint"] == sshd.host_key_fingerprint != old_fingerprint
    assert events == result.events  # the callback saw exactly what the result records
    # the accepted key was recorded, replacing the old line
    lines = [ln for ln in open(known_hosts).read().splitlines() if ln.strip()]
    assert lines == [sshd.known_hosts_line]


@pytest.mark.timeout(60)
def test_reboot_without_reinstall_needs_no_accept(sshd, tmp_path, installer_factory):
    status = str(tmp_path / "status")
    known_hosts = sshd.write_known_hosts(tmp_path / "known_hosts")
    installer = installer_factory(sshd, status, reinstall=False)
    result = _checker(sshd, known_hosts=known_hosts).wait_ready(
        status, timeout=30, interval=0.1, max_interval=0.5
    )
    installer.finish()
    assert result.ok, result.detail
    assert "unreachable" in _states(result)
    assert "host-key-replaced" not in _states(result)


@pytest.mark.timeout(60)
def test_changed_key_is_refused_without_accept(sshd, tmp_path, installer_factory):
    status = str(tmp_path / "status")
    known_hosts = sshd.write_known_hosts(tmp_path / "known_hosts")
    before = open(known_hosts).read()
    old_fingerprint = sshd.host_key_fingerprint
    installer = installer_factory(sshd, status)
    start = time.monotonic()
    result = _checker(sshd, known_hosts=known_hosts).wait_ready(
        status, timeout=30, interval=0.1, max_interval=0.5
    )
    installer.finish()
    assert not result.ok
    assert result.exit_code == ExitCode.HOST_KEY_MISMATCH
    assert result.state == "host-key-mismatch"
    # a clear message naming both fingerprints and the way out
    assert old_fingerprint in result.detail and sshd.host_key_fingerprint in result.detail
    assert "--accept-new-host-key" in result.detail
    assert isinstance(result.error, HostKeyMismatch)
    assert result.error.expected_fingerprint == old_fingerprint
    assert result.error.actual_fingerprint == sshd.host_key_fingerprint
    with pytest.raises(HostKeyMismatch):
        result.raise_for_status()
    # refused at once, not retried until the timeout; nothing was written
    assert time.monotonic() - start < 30
    assert open(known_hosts).read() == before


@pytest.mark.timeout(60)
def test_key_pinned_in_memory_without_known_hosts(sshd, tmp_path, installer_factory):
    """Without a known_hosts file the first key is pinned: a reinstall is still noticed."""
    status = str(tmp_path / "status")
    installer = installer_factory(sshd, status)
    result = _checker(sshd).wait_ready(status, timeout=30, interval=0.1, max_interval=0.5)
    installer.finish()
    assert result.exit_code == ExitCode.HOST_KEY_MISMATCH
    assert _states(result)[:2] == ["started", "host-key-recorded"]


@pytest.mark.timeout(60)
def test_unknown_host_refused_when_asked(sshd, tmp_path):
    status = tmp_path / "status"
    status.write_text("done")
    result = _checker(
        sshd, known_hosts=tmp_path / "empty_known_hosts", reject_unknown_host_key=True
    ).wait_ready(str(status), timeout=10, interval=0.1)
    assert result.exit_code == ExitCode.HOST_KEY_MISMATCH
    assert sshd.host_key_fingerprint in result.detail


@pytest.mark.timeout(60)
def test_timeout_is_clear_and_bounded(sshd, tmp_path):
    status = str(tmp_path / "never")
    start = time.monotonic()
    result = _checker(sshd).wait_ready(status, timeout=1, interval=0.2)
    elapsed = time.monotonic() - start
    assert result.exit_code == ExitCode.TIMEOUT and result.state == "timeout"
    assert "not ready after 1s" in result.detail and status in result.detail
    assert "does not exist yet" in result.detail  # says what was last seen
    assert elapsed < 1 + HANG_MARGIN


@pytest.mark.timeout(60)
def test_status_contains(sshd, tmp_path):
    status = tmp_path / "status"
    status.write_text("phase=installing\n")
    checker = _checker(sshd)
    waiting = checker.wait_ready(str(status), timeout=1, interval=0.2, status_contains="phase=done")
    assert waiting.exit_code == ExitCode.TIMEOUT and "does not contain" in waiting.detail
    threading.Timer(0.3, lambda: status.write_text("phase=done\n")).start()
    assert checker.wait_ready(str(status), timeout=20, interval=0.1, status_contains="phase=done").ok


@pytest.mark.timeout(60)
def test_auth_refused_is_retried_then_times_out(sshd, tmp_path):
    """While the installer has not yet put our key in place, a refused key is a state, not the end."""
    open(sshd.authorized_keys_path, "w").close()
    result = _checker(sshd).wait_ready(None, timeout=1, interval=0.2)
    assert result.exit_code == ExitCode.TIMEOUT
    assert "auth-failed" in _states(result)
    assert "refused" in result.detail


class _MisbehavingHost(threading.Thread):
    """Listens on a port and either resets each connection or accepts and stays silent."""

    def __init__(self, mode: str) -> None:
        super().__init__(daemon=True)
        self.mode = mode
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.stopping = threading.Event()
        self.held: list[socket.socket] = []

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                continue
            if self.mode == "reset":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                conn.close()
            else:
                self.held.append(conn)

    def close(self) -> None:
        self.stopping.set()
        self.join(5)
        self.listener.close()
        for conn in self.held:
            conn.close()


@pytest.mark.timeout(60)
def test_silent_host_never_hangs_past_timeout(sshd):
    """A host that accepts TCP but never sends a banner (hung while booting)."""
    silent = _MisbehavingHost("silent")
    silent.start()
    try:
        checker = HostReadiness(
            "127.0.0.1", silent.port, sshd.username, sshd.client_key_path, connect_timeout=60
        )
        start = time.monotonic()
        result = checker.wait_ready("/nonexistent", timeout=1, interval=0.2)
        assert time.monotonic() - start < 1 + HANG_MARGIN
    finally:
        silent.close()
    assert result.exit_code == ExitCode.TIMEOUT
    assert "unreachable" in _states(result)


@pytest.mark.timeout(60)
def test_resets_then_real_sshd_on_the_same_port(tmp_path):
    """Connection resets while the host boots, then the real sshd takes the port."""
    from tests.sshd import LoopbackSSHServer

    resetting = _MisbehavingHost("reset")
    resetting.start()
    server = LoopbackSSHServer(workdir=tmp_path / "sshd", port=resetting.port)
    status = tmp_path / "status"
    status.write_text("done")

    def boot() -> None:
        time.sleep(0.8)
        resetting.close()
        server.start()

    booter = threading.Thread(target=boot, daemon=True)
    booter.start()
    try:
        result = HostReadiness(
            server.host, server.port, server.username, server.client_key_path, connect_timeout=5
        ).wait_ready(str(status), timeout=30, interval=0.1, max_interval=0.3)
        booter.join(20)
    finally:
        resetting.close()
        server.cleanup()
    assert result.ok, result.detail
    unreachable = [e for e in result.events if e["state"] == "unreachable"]
    assert unreachable and any(w in unreachable[0]["detail"] for w in ("reset", "closed", "EOF", "banner"))


@pytest.mark.timeout(60)
def test_frozen_host_mid_session_never_hangs(sshd, tmp_path):
    """The host hangs (SIGSTOP) while we hold a session: command, reconnect and banner all stall."""
    checker = _checker(sshd, connect_timeout=30)
    assert checker.wait_ready(None, timeout=10, interval=0.1).ok  # keeps its connection open
    sshd.freeze()
    start = time.monotonic()
    result = checker.wait_ready(str(tmp_path / "status"), timeout=1, interval=0.2)
    assert time.monotonic() - start < 1 + HANG_MARGIN
    sshd.thaw()
    assert result.exit_code == ExitCode.TIMEOUT
    checker.close()
