"""Fixtures for the session tests: a minimal XAPI pool on loopback per test."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _REPO_ROOT not in sys.path:  # so ``tests.session.fake_xapi`` imports however pytest was started
    sys.path.insert(0, _REPO_ROOT)

from tests.session.fake_xapi import FakePool  # noqa: E402


@pytest.fixture
def pool() -> Iterator[FakePool]:
    """A two-host fake pool: 127.0.0.1 is the master, 127.0.0.2 a member."""
    fake = FakePool(members=2)
    try:
        yield fake
    finally:
        fake.stop()
