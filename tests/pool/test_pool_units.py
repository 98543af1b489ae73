"""Small rules of the pool module: finding the compute VM, metadata value sizes."""

from __future__ import annotations

import uuid
from pathlib import Path

from xenapi_driver import pool as xpool


class _Conf:
    class xenserver:  # noqa: N801 - mimics oslo.config's group attribute
        compute_vm_uuid = None


def test_compute_vm_uuid_from_the_option_first(tmp_path: Path):
    conf = _Conf()
    conf.xenserver = type("G", (), {"compute_vm_uuid": "11111111-2222-3333-4444-555555555555"})()
    path = tmp_path / "uuid"
    path.write_text(str(uuid.uuid4()) + "\n")
    assert xpool.find_compute_vm_uuid(conf, str(path)) == "11111111-2222-3333-4444-555555555555"


def test_compute_vm_uuid_from_sys_hypervisor(tmp_path: Path):
    vm_uuid = str(uuid.uuid4())
    path = tmp_path / "uuid"
    path.write_text(vm_uuid + "\n")
    assert xpool.find_compute_vm_uuid(_Conf(), str(path)) == vm_uuid
    # an oslo.config group without the option (older conf.py) is fine too
    assert xpool.find_compute_vm_uuid(object(), str(path)) == vm_uuid


def test_no_compute_vm_uuid_outside_a_guest(tmp_path: Path):
    assert xpool.find_compute_vm_uuid(_Conf(), str(tmp_path / "missing")) is None
    dom0 = tmp_path / "uuid"
    dom0.write_text("00000000-0000-0000-0000-000000000000\n")
    assert xpool.find_compute_vm_uuid(_Conf(), str(dom0)) is None


def test_long_reasons_keep_their_advice():
    reason = (
        "host x of compute y did not join (" + "DETAIL " * 80 + "); set operational_state=created to retry"
    )
    fitted = xpool._fit(reason)
    assert len(fitted) <= 255
    assert fitted.startswith("host x of compute y did not join")
    assert fitted.endswith("set operational_state=created to retry")
    assert xpool._fit("short") == "short"
