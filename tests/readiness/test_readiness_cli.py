"""The console script end to end, as Zuul/Nodepool would call it: a subprocess,
JSON lines on stdout, a documented exit code, a human message on stderr."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HANG_MARGIN = 20.0
REQUIRED_KEYS = {"phase", "state", "host", "elapsed", "detail"}


def _command(*args: str) -> list[str]:
    installed = shutil.which("xenapi-driver", path=os.path.dirname(sys.executable))
    if installed:
        return [installed, *args]
    # Exactly what the console script entry point runs.
    return [sys.executable, "-c", "import sys; from xenapi_driver.cli import main; sys.exit(main())", *args]


def _start(*args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen(
        _command(*args), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _finish(proc: subprocess.Popen, timeout: float = 60) -> tuple[int, list[dict], str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"CLI hung; stdout so far:\n{out}\nstderr:\n{err}") from None
    events = [json.loads(line) for line in out.splitlines()]  # every stdout line is JSON
    for event in events:
        assert REQUIRED_KEYS <= set(event), event
    return proc.returncode, events, err


def _run(*args: str, timeout: float = 60) -> tuple[int, list[dict], str]:
    return _finish(_start(*args), timeout)


def _ssh_args(server, *extra: str) -> list[str]:
    return [
        server.host, "--port", str(server.port), "--user", server.username,
        "--key", server.client_key_path, "--connect-timeout", "5", *extra,
    ]  # fmt: skip


@pytest.mark.timeout(90)
def test_wait_ready_through_reboot_and_reinstall(sshd, tmp_path, installer_factory):
    status = str(tmp_path / "status")
    known_hosts = sshd.write_known_hosts(tmp_path / "known_hosts")
    old = sshd.host_key_fingerprint
    proc = _start(
        "host", "wait-ready", *_ssh_args(sshd), "--status-file", status, "--known-hosts", known_hosts,
        "--accept-new-host-key", "--timeout", "40", "--interval", "0.1", "--max-interval", "0.5",
    )  # fmt: skip
    installer = installer_factory(sshd, status)
    code, events, err = _finish(proc)
    installer.finish()
    assert code == 0, err
    states = [e["state"] for e in events]
    assert states[0] == "started" and states[-1] == "ready"
    assert {"waiting", "unreachable", "host-key-replaced"} <= set(states), states
    assert all(e["phase"] == "wait-ready" and e["host"] == sshd.host for e in events)
    replaced = next(e for e in events if e["state"] == "host-key-replaced")
    assert (replaced["previous_fingerprint"], replaced["fingerprint"]) == (old, sshd.host_key_fingerprint)
    assert events[-1]["exit_code"] == 0
    assert [e["elapsed"] for e in events] == sorted(e["elapsed"] for e in events)
    assert open(known_hosts).read().split() == sshd.known_hosts_line.split()


@pytest.mark.timeout(90)
def test_changed_key_without_accept_exits_3(sshd, tmp_path, installer_factory):
    status = str(tmp_path / "status")
    known_hosts = sshd.write_known_hosts(tmp_path / "known_hosts")
    old = sshd.host_key_fingerprint
    proc = _start(
        "host", "wait-ready", *_ssh_args(sshd), "--status-file", status, "--known-hosts", known_hosts,
        "--timeout", "40", "--interval", "0.1", "--max-interval", "0.5",
    )  # fmt: skip
    installer = installer_factory(sshd, status)
    code, events, err = _finish(proc)
    installer.finish()
    assert code == 3
    assert events[-1]["state"] == "host-key-mismatch" and events[-1]["exit_code"] == 3
    assert old in err and sshd.host_key_fingerprint in err and "--accept-new-host-key" in err


@pytest.mark.timeout(60)
def test_timeout_exits_1_and_never_hangs(sshd, tmp_path):
    start = time.monotonic()
    code, events, err = _run(
        "host", "wait-ready", *_ssh_args(sshd), "--status-file", str(tmp_path / "never"),
        "--timeout", "1", "--interval", "0.2",
    )  # fmt: skip
    assert time.monotonic() - start < 1 + HANG_MARGIN
    assert code == 1
    assert events[-1]["state"] == "timeout" and events[-1]["exit_code"] == 1
    assert "not ready after 1s" in err and "does not exist yet" in err


@pytest.mark.timeout(60)
def test_usage_errors_exit_2(sshd, tmp_path):
    code, events, err = _run("host", "wait-ready", sshd.host, "--port", str(sshd.port), "--key",
                             str(tmp_path / "missing_key"), "--timeout", "5")  # fmt: skip
    assert code == 2 and events[-1]["state"] == "failed" and "missing_key" in err
    code, events, err = _run("host", "wait-ready", "--timeout", "5")  # no host
    assert code == 2 and events == [] and "host" in err
    code, _, err = _run("host", "wait-ready", sshd.host, "--timeout", "-1")
    assert code == 2 and "must be > 0" in err
    code, _, err = _run("host", "run-script", sshd.host, "--script", "a", "--command", "b")
    assert code == 2 and "not allowed with" in err


@pytest.mark.timeout(90)
def test_run_script_that_reboots_then_wait_for_status(sshd, tmp_path):
    """The install step in one call: run the installer, ride out its reboot, poll the status file."""
    marker, status = tmp_path / "rebooting", tmp_path / "status"
    script = tmp_path / "install.sh"
    script.write_text(f'#!/bin/sh\necho "install to $1"\ntouch {marker}\nsleep 30\n')

    def installer() -> None:
        deadline = time.monotonic() + 30
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        sshd.stop()
        sshd.regenerate_host_key()
        sshd.start()
        time.sleep(0.5)
        status.write_text("done\n")

    thread = threading.Thread(target=installer, daemon=True)
    thread.start()
    code, events, err = _run(
        "host", "run-script", *_ssh_args(sshd), "--script", str(script), "--disconnect-ok",
        "--status-file", str(status), "--accept-new-host-key", "--timeout", "40", "--interval", "0.1",
        "--max-interval", "0.5", "--arg", "/dev/sda",
    )  # fmt: skip
    thread.join(30)
    assert code == 0, err
    pairs = [(e["phase"], e["state"]) for e in events]
    assert pairs[0] == ("run-script", "started")
    assert ("run-script", "disconnected") in pairs and pairs[-1] == ("wait-ready", "ready")
    assert ("wait-ready", "host-key-replaced") in pairs
    disconnected = next(e for e in events if e["state"] == "disconnected")
    assert disconnected["stdout_tail"] == "install to /dev/sda\n"


@pytest.mark.timeout(60)
def test_pre_snapshot_waits_for_the_halt(sshd, tmp_path):
    threading.Timer(0.8, sshd.stop).start()  # the halt takes effect a moment after the command
    code, events, err = _run(
        "host",
        "pre-snapshot",
        *_ssh_args(sshd),
        "--command",
        "sync",
        "--halt-timeout",
        "20",
        "--settle",
        "0.1",
    )
    assert code == 0, err
    assert [e["phase"] for e in events] == ["pre-snapshot"] * len(events)
    assert events[-1]["state"] == "down" and events[-1]["exit_code"] == 0


@pytest.mark.timeout(60)
def test_failed_script_exits_4(sshd):
    code, events, err = _run("host", "run-script", *_ssh_args(sshd), "--command", "echo nope >&2; exit 5")
    assert code == 4 and events[-1]["exit_status"] == 5 and "nope" in err


def test_help_documents_exit_codes():
    from xenapi_driver.cli import build_parser

    text = build_parser()._subparsers._group_actions[0].choices["host"].format_help()
    text = " ".join(text.split())
    for action in ("wait-ready", "run-script", "pre-snapshot", "wait-down"):
        assert action in text
    assert "3 host key mismatch" in text and "4 remote script failed" in text


@pytest.mark.timeout(60)
def test_wait_down_on_a_stopped_host(sshd):
    sshd.stop()
    code, events, err = _run("host", "wait-down", sshd.host, "--port", str(sshd.port), "--timeout", "10")
    assert code == 0, err
    assert [(e["phase"], e["state"]) for e in events] == [("wait-down", "started"), ("wait-down", "down")]
