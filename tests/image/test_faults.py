"""Faults: Glance unreachable, images that are not what they claim. A clear error; the SR unchanged."""

from __future__ import annotations

import uuid

import pytest
from image_helpers import MiB, chain_tgz, make_chain, make_instance, plain_vhd, sr_state, tgz

from nova import exception as nova_exception
from nova import objects
from tests.glance_server import GlanceServer
from xenapi_driver.image import ImageAPI, XenAPIImageSource

HANDLERS = ["direct_vhd", "vdi_remote_stream", "vdi_local_dev"]


@pytest.fixture(params=HANDLERS)
def handler(request, conf) -> str:
    conf.set_override("image_handler", request.param, group="xenserver")
    conf.set_override("num_retries", 0, group="glance")
    yield request.param
    conf.clear_override("num_retries", group="glance")


def boot(session, context, sr_ref, image_id, image_api=None):
    source = XenAPIImageSource(session, image_api=image_api)
    meta = objects.ImageMeta.from_dict({"id": image_id})
    return source.root_vdi(context, make_instance(), meta, sr_ref)


def assert_refused(sim, session, context, sr_ref, sr_dir, image_id, error, match, image_api=None):
    before = sr_state(sim, sr_ref, sr_dir)
    with pytest.raises(error, match=match):
        boot(session, context, sr_ref, image_id, image_api)
    assert sr_state(sim, sr_ref, sr_dir) == before


def test_tgz_without_leaf(handler, sim, session, context, glance, sr_ref, sr_dir, tmp_path):
    paths, _ = make_chain(tmp_path / "c", depth=2)
    data = tgz([("1.vhd", paths[1].read_bytes())])
    image_id = glance.add(data, "vhd", "ovf")
    assert_refused(
        sim, session, context, sr_ref, sr_dir, image_id, nova_exception.ImageUnacceptable, "0.vhd|gaps"
    )


def test_tgz_with_stray_member(handler, sim, session, context, glance, sr_ref, sr_dir, tmp_path):
    paths, _ = make_chain(tmp_path / "c", depth=1)
    data = tgz([("0.vhd", paths[0].read_bytes()), ("../etc/passwd", b"root:x:0:0\n")])
    image_id = glance.add(data, "vhd", "ovf")
    assert_refused(
        sim, session, context, sr_ref, sr_dir, image_id, nova_exception.ImageUnacceptable, "member"
    )


def test_broken_chain(handler, sim, session, context, glance, sr_ref, sr_dir, tmp_path):
    chain_a, _ = make_chain(tmp_path / "a", depth=2)
    chain_b, _ = make_chain(tmp_path / "b", depth=2)
    data = tgz([("0.vhd", chain_a[0].read_bytes()), ("1.vhd", chain_b[1].read_bytes())])
    image_id = glance.add(data, "vhd", "ovf")
    assert_refused(
        sim, session, context, sr_ref, sr_dir, image_id, nova_exception.ImageUnacceptable, "parent"
    )


def test_chain_missing_its_base(handler, sim, session, context, glance, sr_ref, sr_dir, tmp_path):
    paths, _ = make_chain(tmp_path / "c", depth=3)
    image_id = glance.add(chain_tgz(paths[:2]), "vhd", "ovf")
    assert_refused(
        sim, session, context, sr_ref, sr_dir, image_id, nova_exception.ImageUnacceptable, "parent"
    )


def test_truncated_plain_vhd(handler, sim, session, context, glance, sr_ref, sr_dir, tmp_path):
    data, _ = plain_vhd(tmp_path / "p")
    image_id = glance.add(data[: len(data) // 2], "vhd", "bare")
    assert_refused(sim, session, context, sr_ref, sr_dir, image_id, nova_exception.ImageUnacceptable, ".")


def test_truncated_vhd_in_tgz(handler, sim, session, context, glance, sr_ref, sr_dir, tmp_path):
    paths, _ = make_chain(tmp_path / "c", depth=2)
    leaf = paths[0].read_bytes()
    data = tgz([("0.vhd", leaf[: len(leaf) - 3 * 512]), ("1.vhd", paths[1].read_bytes())])
    image_id = glance.add(data, "vhd", "ovf")
    assert_refused(sim, session, context, sr_ref, sr_dir, image_id, nova_exception.ImageUnacceptable, ".")


def test_not_a_gzip(handler, sim, session, context, glance, sr_ref, sr_dir):
    image_id = glance.add(b"this is not a tgz" * 100, "vhd", "ovf")
    assert_refused(
        sim, session, context, sr_ref, sr_dir, image_id, nova_exception.ImageUnacceptable, "tar|gzip"
    )


def test_unsupported_format(handler, sim, session, context, glance, sr_ref, sr_dir):
    image_id = glance.add(b"q" * MiB, "qcow2", "bare")
    assert_refused(sim, session, context, sr_ref, sr_dir, image_id, nova_exception.ImageUnacceptable, "qcow2")


def test_glance_unreachable(handler, conf, sim, session, context, sr_ref, sr_dir):
    conf.set_override("api_servers", ["http://127.0.0.1:9"], group="glance")
    image_id = str(uuid.uuid4())
    assert_refused(
        sim, session, context, sr_ref, sr_dir, image_id, nova_exception.GlanceConnectionFailed, "."
    )


class _DiesAfterMetadata(ImageAPI):
    """Glance answers the metadata request, then goes away before the data is fetched."""

    def __init__(self, server: GlanceServer) -> None:
        super().__init__()
        self.server = server

    def get(self, context, image_id):
        meta = super().get(context, image_id)
        self.server.stop()
        return meta


def test_glance_goes_away_before_the_data(handler, conf, sim, session, context, sr_ref, sr_dir, tmp_path):
    server = GlanceServer()
    conf.set_override("api_servers", [server.endpoint], group="glance")
    paths, _ = make_chain(tmp_path / "c", depth=1)
    image_id = server.add(chain_tgz(paths), "vhd", "ovf")
    assert_refused(
        sim, session, context, sr_ref, sr_dir, image_id, nova_exception.GlanceConnectionFailed, ".",
        image_api=_DiesAfterMetadata(server),
    )  # fmt: skip


@pytest.mark.parametrize("container", ["ovf", "bare"])
def test_corrupt_download_is_refused(
    handler, sim, session, context, glance, sr_ref, sr_dir, tmp_path, container
):
    """Bytes that do not match Glance's sha512 (its os_hash_value) never become a disk."""
    paths, _ = make_chain(tmp_path / "c", depth=1)
    data = chain_tgz(paths) if container == "ovf" else paths[0].read_bytes()
    image_id = glance.add(data, "vhd", container)
    glance.images[image_id]["os_hash_value"] = "0" * 128
    assert_refused(
        sim, session, context, sr_ref, sr_dir, image_id, nova_exception.ImageUnacceptable, "corrupt download"
    )


def test_md5_is_checked_only_without_the_multihash(
    handler, sim, session, context, glance, sr_ref, sr_dir, tmp_path
):
    data, _ = plain_vhd(tmp_path / "p")
    image_id = glance.add(data, "vhd", "bare")
    glance.images[image_id]["checksum"] = "0" * 32  # not looked at: the sha512 is there and right
    assert boot(session, context, sr_ref, image_id)
    older = glance.add(data, "vhd", "bare")  # as an older Glance records it: MD5 only
    glance.images[older].update(os_hash_algo=None, os_hash_value=None, checksum="0" * 32)
    assert_refused(
        sim, session, context, sr_ref, sr_dir, older, nova_exception.ImageUnacceptable, "corrupt download"
    )
