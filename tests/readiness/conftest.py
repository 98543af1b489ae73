"""Fixtures for the readiness tests: a real loopback OpenSSH server per test."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

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
        server.cleanup()
