"""run-script, pre-snapshot and wait-down against a real loopback sshd.

Scripts really run in the "host" (this machine, through sshd); a script that
reboots or halts the host is played by the test stopping sshd once the script
has signalled (by a marker file) that it got that far.
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from xenapi_driver.readiness import ExitCode, HostReadiness

HANG_MARGIN = 20.0


def _checker(server, **kwargs) -> HostReadiness:
    kwargs.setdefault("connect_timeout", 5.0)
    return HostReadiness(server.host, server.port, server.username, server.client_key_path, **kwargs)


def _script(tmp_path, body: str, name: str = "script.sh") -> str:
    path = tmp_path / name
    path.write_text(body)
    return str(path)


def _when_file_appears(path: str, action, timeout: float = 20.0) -> threading.Thread:
    """Run ``action`` once ``path`` exists (the script's "I am about to reboot")."""

    def watch() -> None:
        deadline = time.monotonic() + timeout
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.02)
        action()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.mark.timeout(60)
def test_script_is_uploaded_and_run_with_arguments(sshd, tmp_path):
    script = _script(
        tmp_path,
        '#!/bin/sh\nprintf "%s|" "$@"\necho\necho "running from $0" >&2\n[ -t 0 ] || cat >/dev/null\n',
    )
    result = _checker(sshd).run_script(script, args=["one two", "$HOME", "it's"], timeout=20)
    assert result.ok and result.exit_code == ExitCode.OK, result.detail
    assert result.stdout == "one two|$HOME|it's|\n"
    assert "xenapi-driver-script." in result.stderr
    assert [e["state"] for e in result.events] == ["started", "host-key-recorded", "running", "succeeded"]
    leftover = result.stderr.split("running from ", 1)[1].strip()
    assert not os.path.exists(leftover), "the uploaded copy is removed after the run"


@pytest.mark.timeout(60)
def test_shebang_of_the_script_is_honoured(sshd, tmp_path):
    script = _script(tmp_path, "#!/usr/bin/env python3\nimport sys\nprint(sys.version_info[0])\n", "s.py")
    result = _checker(sshd).run_script(script, timeout=20)
    assert result.ok and result.stdout.strip() == "3"


@pytest.mark.timeout(60)
def test_failing_script_exit_code_4_with_its_stderr(sshd, tmp_path):
    result = _checker(sshd).run_script(command="echo partial; echo 'disk full' >&2; exit 7", timeout=20)
    assert result.exit_code == ExitCode.SCRIPT_FAILED and result.exit_status == 7
    assert "exited with status 7" in result.detail and "disk full" in result.detail
    assert result.stdout == "partial\n"


@pytest.mark.timeout(60)
def test_script_timeout_is_a_script_failure_and_bounded(sshd):
    start = time.monotonic()
    result = _checker(sshd).run_script(command="sleep 30", timeout=20, script_timeout=1)
    assert time.monotonic() - start < 1 + HANG_MARGIN
    assert result.exit_code == ExitCode.SCRIPT_FAILED
    assert "did not finish within its timeout of 1s" in result.detail


@pytest.mark.timeout(60)
def test_overall_timeout_while_script_runs(sshd):
    start = time.monotonic()
    result = _checker(sshd).run_script(command="sleep 30", timeout=1)
    assert time.monotonic() - start < 1 + HANG_MARGIN
    assert result.exit_code == ExitCode.TIMEOUT and "still running" in result.detail


@pytest.mark.timeout(60)
def test_missing_script_is_a_usage_error(sshd, tmp_path):
    result = _checker(sshd).run_script(str(tmp_path / "nope.sh"), timeout=5)
    assert result.exit_code == ExitCode.USAGE and "cannot read script" in result.detail


@pytest.mark.timeout(60)
def test_missing_key_is_a_usage_error(sshd, tmp_path):
    checker = HostReadiness(sshd.host, sshd.port, sshd.username, str(tmp_path / "no_key"))
    result = checker.wait_ready(None, timeout=5)
    assert result.exit_code == ExitCode.USAGE and "no_key" in result.detail


@pytest.mark.timeout(60)
def test_installer_that_reboots_then_status_file(sshd, tmp_path):
    """The install step: the script starts the install, the host reboots under it,
    comes back reinstalled and writes the status file; one checker follows it all."""
    marker, status = str(tmp_path / "rebooting"), str(tmp_path / "status")
    script = _script(tmp_path, f"#!/bin/sh\necho installing\ntouch {marker}\nsleep 30\n")

    def reboot_into_new_install() -> None:
        time.sleep(0.2)
        sshd.stop()
        sshd.regenerate_host_key()
        time.sleep(0.3)
        sshd.start()
        time.sleep(0.5)
        with open(status, "w") as handle:
            handle.write("done\n")

    watcher = _when_file_appears(marker, reboot_into_new_install)
    checker = _checker(sshd, accept_new_host_key=True)
    ran = checker.run_script(script, timeout=30, disconnect_ok=True)
    ready = checker.wait_ready(status, timeout=30, interval=0.1, max_interval=0.5)
    watcher.join(20)
    assert ran.ok and ran.state == "disconnected", ran.detail
    assert "installing" in ran.stdout
    assert ready.ok, ready.detail
    states = [e["state"] for e in ready.events]
    assert states.count("started") == 2 and "host-key-replaced" in states and states[-1] == "ready"


@pytest.mark.timeout(60)
def test_lost_connection_is_a_failure_unless_expected(sshd, tmp_path):
    marker = str(tmp_path / "started")
    watcher = _when_file_appears(marker, sshd.stop)
    result = _checker(sshd).run_script(command=f"touch {marker}; sleep 30", timeout=20)
    watcher.join(20)
    assert result.exit_code == ExitCode.SCRIPT_FAILED and "lost" in result.detail


@pytest.mark.timeout(60)
def test_pre_snapshot_halt_then_down(sshd, tmp_path):
    marker = str(tmp_path / "halting")
    script = _script(tmp_path, f"#!/bin/sh\nrm -f /tmp/some-build-cache\ntouch {marker}\nexec sleep 30\n")
    watcher = _when_file_appears(marker, sshd.stop)  # the halt
    result = _checker(sshd).pre_snapshot(script, halt_timeout=20, settle=0.2)
    watcher.join(20)
    assert result.ok and result.state == "down", result.detail
    states = [e["state"] for e in result.events if e["phase"] == "pre-snapshot"]
    assert states[0] == "started" and "running" in states and "disconnected" in states
    assert states[-2:] == ["settling", "down"]


@pytest.mark.timeout(60)
def test_pre_snapshot_script_that_returns_before_the_halt(sshd, tmp_path):
    """``halt`` often returns 0 and the host goes away a moment later."""
    threading.Timer(1.0, sshd.stop).start()
    result = _checker(sshd).pre_snapshot(command="true", halt_timeout=20)
    assert result.ok and result.state == "down", result.detail
    states = [e["state"] for e in result.events]
    assert "succeeded" in states and "waiting-down" in states


@pytest.mark.timeout(60)
def test_pre_snapshot_times_out_when_host_never_halts(sshd):
    start = time.monotonic()
    result = _checker(sshd).pre_snapshot(command="true", halt_timeout=1)
    assert time.monotonic() - start < 1 + 5 + HANG_MARGIN
    assert result.exit_code == ExitCode.TIMEOUT
    assert "still answers SSH" in result.detail


@pytest.mark.timeout(60)
def test_wait_down_on_a_stopped_host(sshd):
    sshd.stop()
    result = HostReadiness(sshd.host, sshd.port).wait_down(timeout=5, interval=0.1)
    assert result.ok and [e["state"] for e in result.events] == ["started", "down"]


@pytest.mark.timeout(60)
def test_hung_host_before_the_script_starts_is_a_bounded_timeout(sshd):
    """The cached connection is dead (host hung): the script never starts and nothing hangs."""
    checker = _checker(sshd, connect_timeout=30)
    assert checker.wait_ready(None, timeout=10, interval=0.1).ok
    sshd.freeze()
    start = time.monotonic()
    result = checker.run_script(command="touch /tmp/should-not-matter", timeout=1, interval=0.2)
    assert time.monotonic() - start < 1 + HANG_MARGIN
    sshd.thaw()
    assert result.exit_code == ExitCode.TIMEOUT
    assert "unreachable" in [e["state"] for e in result.events if e["phase"] == "run-script"]
