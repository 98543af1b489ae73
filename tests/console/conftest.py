"""Fixtures for console tests (defined in guest_helpers, shared with tests/agent and tests/console)."""

from tests.volumes.guest_helpers import managed_host, session, sim, simulator  # noqa: F401
