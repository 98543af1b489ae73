"""Parsing Cinder's connection info and Nova's device names (no XAPI needed)."""

from __future__ import annotations

import pytest

from nova import exception as nova_exception
from xenapi_driver import conf as xconf
from xenapi_driver import volume_utils as vu


def _info(**data):
    base = {"volume_id": "v1", "target_iqn": "iqn.x:1", "target_lun": 3, "target_portal": "10.0.0.5:3261"}
    base.update(data)
    return {"driver_volume_type": "iscsi", "data": {k: v for k, v in base.items() if v is not None}}


@pytest.mark.parametrize(
    ("portal", "host", "port"),
    [
        ("10.0.0.5:3261", "10.0.0.5", "3261"),
        ("[fd00::5]:3262", "fd00::5", "3262"),
        ("storage.example.org", "storage.example.org", "3260"),
    ],
)
def test_portals(portal, host, port):
    target = vu.parse_connection_info(_info(target_portal=portal))
    assert (target.host, target.port, target.iqn, target.lun) == (host, port, "iqn.x:1", 3)
    assert target.device_config() == {"target": host, "port": port, "targetIQN": "iqn.x:1"}


def test_multipath_lists_and_conf_fallback():
    info = _info(target_portal=None, target_iqn=None, target_lun=None)
    info["data"].update(target_portals=["10.1.1.1:3260"], target_iqns=["iqn.y:2"], target_luns=[7])
    target = vu.parse_connection_info(info)
    assert (target.host, target.iqn, target.lun) == ("10.1.1.1", "iqn.y:2", 7)
    xconf.CONF.set_override("target_host", "fallback.example.org", group="xenserver")
    try:
        target = vu.parse_connection_info(_info(target_portal=None))
        assert target.host == "fallback.example.org" and target.port == "3260"
    finally:
        xconf.CONF.clear_override("target_host", group="xenserver")


def test_missing_iqn_and_bad_lun():
    with pytest.raises(nova_exception.StorageError, match="target_iqn"):
        vu.parse_connection_info(_info(target_iqn=None))
    with pytest.raises(nova_exception.StorageError, match="not a number"):
        vu.parse_connection_info(_info(target_lun="x"))
    with pytest.raises(nova_exception.StorageError, match="CHAP"):
        vu.parse_connection_info(_info(auth_method="CHAP", auth_username="u"))


def test_sr_uuid_is_stable_per_target():
    a = vu.parse_connection_info(_info(target_lun=1))
    b = vu.parse_connection_info(_info(target_lun=2))
    c = vu.parse_connection_info(_info(target_iqn="iqn.other:1"))
    assert a.sr_uuid == b.sr_uuid != c.sr_uuid


@pytest.mark.parametrize(
    ("name", "device"),
    [
        ("/dev/xvda", "0"),
        ("/dev/xvdb", "1"),
        ("vdc", "2"),
        ("/dev/sdd", "3"),
        ("hde", "4"),
        ("5", "5"),
        (None, None),
    ],
)
def test_mountpoints(name, device):
    assert vu.mountpoint_to_userdevice(name) == device


@pytest.mark.parametrize("name", ["/dev/nvme0n1", "/dev/xvdz", "/dev/xvdaa", "99"])
def test_bad_mountpoints(name):
    with pytest.raises(nova_exception.StorageError):
        vu.mountpoint_to_userdevice(name)
