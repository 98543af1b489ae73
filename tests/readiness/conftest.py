"""Fixtures for the readiness tests: a real loopback OpenSSH server per test,
and an "installer" thread that reboots and reinstalls it on a schedule."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterator

import pytest

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _REPO_ROOT not in sys.path:  # so ``tests.sshd`` imports however pytest was started
    sys.path.insert(0, _REPO_ROOT)

from tests.sshd import LoopbackSSHServer, sshd_available  # noqa: E402


@pytest.fixture
def sshd(tmp_path) -> Iterator[LoopbackSSHServer]:
    """A started loopback sshd with its own host key; stopped and cleaned up afterwards."""
    if not sshd_available():
        pytest.skip("/usr/sbin/sshd or ssh-keygen is not installed")
    server = LoopbackSSHServer(workdir=tmp_path / "sshd")
    server.start()
    try:
        yield server
    finally:
        server.thaw()
        server.cleanup()


class Installer(threading.Thread):
    """Plays a XenServer installer against the loopback host, step by step.

    ``steps`` is a list of ``(pause_seconds, action)``; each action is a
    callable run after its pause. Errors are kept and re-raised by
    :meth:`finish` so a broken scenario fails the test instead of hiding.
    """

    def __init__(self, steps: list[tuple[float, Callable[[], None]]]) -> None:
        super().__init__(name="fake-installer", daemon=True)
        self.steps = steps
        self.error: BaseException | None = None
        self.done: list[str] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        try:
            for pause, action in self.steps:
                if self._stop_event.wait(pause):
                    return
                action()
                self.done.append(getattr(action, "__name__", repr(action)))
        except BaseException as exc:  # noqa: BLE001 - reported by finish()
            self.error = exc

    def finish(self, timeout: float = 30.0) -> None:
        self._stop_event.set()
        self.join(timeout)
        assert not self.is_alive(), "installer thread did not finish"
        if self.error is not None:
            raise self.error


def reboot_and_reinstall(server: LoopbackSSHServer, status_file: str, reinstall: bool = True) -> Installer:
    """The issue's scenario: the host goes down (reboot), comes back with a new
    host key (reinstall), and only later writes the status file."""

    def go_down() -> None:
        server.stop()

    def come_back() -> None:
        if reinstall:
            server.regenerate_host_key()
        server.start()

    def write_status() -> None:
        with open(status_file, "w", encoding="ascii") as handle:
            handle.write("installed\n")

    return Installer([(0.5, go_down), (0.6, come_back), (0.6, write_status)])


@pytest.fixture
def installer_factory() -> Iterator[Callable[..., Installer]]:
    """Start an :class:`Installer` for a scenario; always joined at teardown."""
    started: list[Installer] = []

    def start(server: LoopbackSSHServer, status_file: str, reinstall: bool = True) -> Installer:
        installer = reboot_and_reinstall(server, status_file, reinstall)
        started.append(installer)
        installer.start()
        return installer

    yield start
    for installer in started:
        installer._stop_event.set()
        installer.join(30)
