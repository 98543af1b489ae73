"""Fixtures for the VHD tests."""

import pytest


@pytest.fixture
def sr(tmp_path):
    """A directory playing the part of /var/run/sr-mount/<sr-uuid>."""
    path = tmp_path / "sr"
    path.mkdir()
    return path
