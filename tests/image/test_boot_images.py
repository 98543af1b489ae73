"""Boot disks from every image format through every image handler, on the simulator."""

from __future__ import annotations

import pytest
from image_helpers import MiB, chain_tgz, make_chain, make_instance, plain_vhd, raw_disk, vdi_bytes

from nova import objects
from xenapi_driver.image import XenAPIImageSource

HANDLERS = ["direct_vhd", "vdi_remote_stream", "vdi_local_dev"]


def _meta(image_id: str) -> objects.ImageMeta:
    return objects.ImageMeta.from_dict({"id": image_id})


@pytest.fixture(params=HANDLERS)
def handler(request, conf) -> str:
    conf.set_override("image_handler", request.param, group="xenserver")
    return request.param


def _boot(session, context, sr_ref, image_id):
    source = XenAPIImageSource(session)
    instance = make_instance()
    vdi = source.root_vdi(context, instance, _meta(image_id), sr_ref)
    return source, instance, vdi, session.call_xenapi("VDI.get_record", vdi)


def test_tgz_chain(handler, session, context, glance, sr_ref, sr_dir, tmp_path):
    paths, expected = make_chain(tmp_path / "chain", depth=3)
    image_id = glance.add(chain_tgz(paths), "vhd", "ovf")
    _, instance, vdi, rec = _boot(session, context, sr_ref, image_id)
    assert rec["SR"] == sr_ref and rec["managed"]
    assert int(rec["virtual_size"]) == 8 * MiB
    assert vdi_bytes(sr_dir, rec["uuid"]) == expected
    assert rec["name_label"] == f"{instance.name} root"


def test_plain_vhd(handler, session, context, glance, sr_ref, sr_dir, tmp_path):
    data, expected = plain_vhd(tmp_path / "plain")
    image_id = glance.add(data, "vhd", "bare")
    _, _, vdi, rec = _boot(session, context, sr_ref, image_id)
    assert vdi_bytes(sr_dir, rec["uuid"]) == expected


def test_raw(handler, session, context, glance, sr_ref, sr_dir):
    data = raw_disk()
    image_id = glance.add(data, "raw", "bare")
    _, _, vdi, rec = _boot(session, context, sr_ref, image_id)
    assert vdi_bytes(sr_dir, rec["uuid"], len(data)) == data


def test_iso_gives_blank_root_and_a_cd(handler, session, context, glance, sr_ref, sr_dir):
    iso = raw_disk(4 * MiB)
    image_id = glance.add(iso, "iso", "bare")
    source, instance, root, rec = _boot(session, context, sr_ref, image_id)
    assert int(rec["virtual_size"]) == 1024 * MiB  # the flavor's root_gb
    assert vdi_bytes(sr_dir, rec["uuid"], 4 * MiB) == bytes(4 * MiB)
    cd = source.cdrom_vdi(context, instance, _meta(image_id), sr_ref)
    cd_uuid = session.call_xenapi("VDI.get_uuid", cd)
    assert vdi_bytes(sr_dir, cd_uuid, len(iso)) == iso


def test_no_cd_for_disk_images(session, context, glance, sr_ref, conf):
    image_id = glance.add(raw_disk(), "raw", "bare")
    source = XenAPIImageSource(session)
    assert source.cdrom_vdi(context, make_instance(), _meta(image_id), sr_ref) is None
