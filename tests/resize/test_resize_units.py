"""Pure helpers of migrateops: the destination's XAPI URL, staging ids, refusals."""

from __future__ import annotations

import uuid

import pytest

from nova import exception as nova_exception
from xenapi_driver import migrateops


@pytest.mark.parametrize(
    ("own", "dest", "expected"),
    [
        ("https://10.0.0.5", "10.0.0.7", "https://10.0.0.7/"),
        ("https://xs1.example.org:8443/", "10.0.0.7", "https://10.0.0.7:8443/"),
        ("http://127.0.0.2:36345/", "127.0.0.3", "http://127.0.0.3:36345/"),
        ("https://[fd00::1]/", "fd00::2", "https://[fd00::2]/"),
        ("https://root:secret@10.0.0.5/", "10.0.0.7", "https://10.0.0.7/"),
    ],
)
def test_destination_url_keeps_scheme_and_port_never_credentials(own, dest, expected):
    assert migrateops.dest_url(own, dest) == expected


def test_each_disk_has_its_own_stable_staging_directory():
    instance = str(uuid.uuid4())
    root = {"role": "root", "device": "0"}
    eph = {"role": "ephemeral", "device": "4"}
    assert migrateops._staging_id(instance, root) == migrateops._staging_id(instance, dict(root))
    assert migrateops._staging_id(instance, root) != migrateops._staging_id(instance, eph)
    uuid.UUID(migrateops._staging_id(instance, root))  # the plug-ins accept only UUIDs


def test_refusals_are_rollbacks_carrying_a_resize_error():
    err = migrateops._refuse("because")
    assert isinstance(err, nova_exception.InstanceFaultRollback)
    assert isinstance(err.inner_exception, nova_exception.ResizeError)
    assert "because" in str(err.inner_exception)
