"""glance plug-in against a real loopback HTTP(S) server speaking Glance's v2 image API."""

from __future__ import annotations

import io
import json
import os
import random
import re
import ssl
import subprocess
import tarfile
import uuid

import pytest
from plugin_helpers import call

from tests.glance_server import GlanceServer
from xenapi_driver import vhd
from xenapi_driver.simulator.dom0 import XapiError

MiB = 1024 * 1024


def sr_arg(sandbox) -> str:
    return f"/var/run/sr-mount/{sandbox.local_sr_uuid}"


def sr_files(sandbox) -> list[str]:
    return sorted(p.name for p in sandbox.sr_path().iterdir() if p.is_file())


def staging_leftovers(sandbox) -> list[str]:
    return [p for p in os.listdir(sandbox.path("/images")) if p.startswith("glance")]


@pytest.fixture
def glance():
    server = GlanceServer()
    try:
        yield server
    finally:
        server.stop()


def build_chain(directory, levels=3, size=6 * MiB, seed=2):
    """VHD chain files (leaf first) in ``directory`` and the leaf's content."""
    rng = random.Random(seed)
    paths = [directory / f"{uuid.uuid4()}.vhd" for _ in range(levels)]
    vhd.create_dynamic(str(paths[-1]), size)
    for level in range(levels - 1, -1, -1):
        if level != levels - 1:
            vhd.snapshot(str(paths[level]), str(paths[level + 1]))
            vhd.set_hidden(str(paths[level + 1]), True)
        with vhd.open_chain(str(paths[level])) as chain:
            for _ in range(4):
                offset = rng.randrange(0, size // 4096 - 64) * 4096
                chain.write(offset, (b"text %d " % level) * 2048 + rng.randbytes(4096))
    with vhd.open_chain(str(paths[0]), writable=False) as chain:
        return paths, chain.read(0, size)


def tgz_of(paths, names=None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for index, path in enumerate(paths):
            archive.add(str(path), arcname=(names or {}).get(index, f"{index}.vhd"))
    return buffer.getvalue()


def read_leaf(sandbox, leaf_uuid) -> bytes:
    with vhd.open_chain(str(sandbox.sr_path() / f"{leaf_uuid}.vhd"), writable=False) as chain:
        return chain.read(0, chain.virtual_size)


def download(sandbox, glance, image_id, **extra):
    args = dict(image_id=image_id, endpoint=glance.endpoint, sr_path=sr_arg(sandbox), token=glance.token)
    args.update(extra)
    return json.loads(call(sandbox, "glance", "download_vhd", **args))


def test_download_tgz_chain(dom0, glance, tmp_path):
    paths, content = build_chain(tmp_path)
    image_id = glance.add(tgz_of(paths), "vhd", "ovf")
    stack = [str(uuid.uuid4()) for _ in paths]
    result = download(dom0, glance, image_id, uuid_stack=json.dumps(stack))
    assert result["root"] == {"uuid": stack[0]} and result["chain"] == stack and result["format"] == "vhd"
    assert read_leaf(dom0, stack[0]) == content
    assert vhd.info(str(dom0.sr_path() / f"{stack[0]}.vhd")).depth == 3
    assert staging_leftovers(dom0) == []
    assert glance.requests[0][2]["X-Auth-Token"] == glance.token


def test_download_plain_vhd_and_raw(dom0, glance, tmp_path):
    paths, content = build_chain(tmp_path, levels=1)
    vhd_image = glance.add(paths[0].read_bytes(), "vhd", "bare")
    result = download(dom0, glance, vhd_image)
    assert read_leaf(dom0, result["root"]["uuid"]) == content
    raw = os.urandom(3 * MiB)
    raw_image = glance.add(raw, "raw", "bare")
    result = download(dom0, glance, raw_image)
    assert result["format"] == "raw"
    assert (dom0.sr_path() / f"{result['root']['uuid']}.raw").read_bytes() == raw


def test_upload_chain_then_download_round_trip(hosts, glance):
    src = hosts.new("127.0.0.1", "src")
    dst = hosts.new("127.0.0.1", "dst")
    paths, content = build_chain(src.sr_path())
    chain_uuids = [p.name[:-4] for p in paths]
    image_id = glance.queued(disk_format="vhd", container_format="ovf")
    result = json.loads(
        call(
            src,
            "glance",
            "upload_vhd",
            image_id=image_id,
            endpoint=glance.endpoint,
            sr_path=sr_arg(src),
            token=glance.token,
            vdi_uuids=json.dumps(chain_uuids),
            compression_level="9",
        )
    )
    data = glance.data[image_id]
    assert result["size"] == len(data)
    assert result["checksum"] == glance.images[image_id]["checksum"]
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        assert archive.getnames() == ["0.vhd", "1.vhd", "2.vhd"]
        for index, path in enumerate(paths):
            assert archive.extractfile(f"{index}.vhd").read() == path.read_bytes()
    assert staging_leftovers(src) == []
    assert any(h.get("Transfer-Encoding") == "chunked" for m, _, h in glance.requests if m == "PUT")
    downloaded = download(dst, glance, image_id)
    assert read_leaf(dst, downloaded["root"]["uuid"]) == content


def test_compression_level_changes_the_output(dom0, glance):
    paths, _ = build_chain(dom0.sr_path(), levels=1)
    sizes = []
    for level in ("1", "9"):
        image_id = glance.queued(disk_format="vhd", container_format="ovf")
        call(
            dom0,
            "glance",
            "upload_vhd",
            image_id=image_id,
            endpoint=glance.endpoint,
            sr_path=sr_arg(dom0),
            token=glance.token,
            vdi_uuids=json.dumps([paths[0].name[:-4]]),
            compression_level=level,
        )
        sizes.append(len(glance.data[image_id]))
    assert sizes[1] < sizes[0]


def test_upload_refuses_non_chain(dom0, glance):
    first, _ = build_chain(dom0.sr_path(), levels=2, seed=1)
    other, _ = build_chain(dom0.sr_path(), levels=1, seed=3)
    with pytest.raises(XapiError) as err:
        call(
            dom0,
            "glance",
            "upload_vhd",
            image_id=glance.queued(disk_format="vhd", container_format="ovf"),
            endpoint=glance.endpoint,
            sr_path=sr_arg(dom0),
            token=glance.token,
            vdi_uuids=json.dumps([first[0].name[:-4], other[0].name[:-4]]),
        )
    assert err.value.code == "VHD_CHAIN_INVALID"
    assert not [r for r in glance.requests if r[0] == "PUT"]


def test_wrong_token_is_a_clear_failure(dom0, glance, tmp_path):
    paths, _ = build_chain(tmp_path, levels=1)
    image_id = glance.add(tgz_of(paths), "vhd", "ovf")
    before = sr_files(dom0)
    with pytest.raises(XapiError) as err:
        download(dom0, glance, image_id, token="wrong")
    assert err.value.code == "GLANCE_ERROR" and err.value.params[:2] == ["401", "Unauthorized"]
    assert sr_files(dom0) == before


def test_connection_errors_and_5xx_are_retried(dom0, glance, tmp_path):
    paths, content = build_chain(tmp_path, levels=2)
    image_id = glance.add(tgz_of(paths), "vhd", "ovf")
    glance.drop_next = 2
    glance.status_next = [503]
    glance.truncate_next = 1
    result = download(dom0, glance, image_id, retries="5")
    assert read_leaf(dom0, result["root"]["uuid"]) == content
    assert staging_leftovers(dom0) == []


def test_retries_exhausted(dom0, glance, tmp_path):
    paths, _ = build_chain(tmp_path, levels=1)
    image_id = glance.add(tgz_of(paths), "vhd", "ovf")
    glance.drop_next = 3
    before = sr_files(dom0)
    with pytest.raises(XapiError) as err:
        download(dom0, glance, image_id, retries="1")
    assert err.value.code == "GLANCE_UNREACHABLE"
    assert sr_files(dom0) == before


def _log(sandbox) -> str:
    return (sandbox.root / "var" / "log" / "xenapi-driver-plugins.log").read_text()


@pytest.mark.parametrize("container", ["bare", "ovf"])
def test_download_verifies_glances_sha512_before_its_md5(dom0, glance, tmp_path, container):
    """Glance's multihash (sha512) is what is checked: a wrong one refuses the image, a wrong MD5 does not."""
    paths, content = build_chain(tmp_path, levels=1)
    data = paths[0].read_bytes() if container == "bare" else tgz_of(paths)
    image_id = glance.add(data, "vhd", container)
    glance.images[image_id]["checksum"] = "0" * 32  # ignored: the stronger hash is there
    result = download(dom0, glance, image_id)
    assert read_leaf(dom0, result["root"]["uuid"]) == content
    assert (
        f"image {image_id} ({len(data)} bytes, {'vhd' if container == 'bare' else 'tgz'}, sha512 verified)"
        in _log(dom0)
    )

    corrupt = glance.add(data, "vhd", container)
    glance.images[corrupt]["os_hash_value"] = "f" * 128
    before = sr_files(dom0)
    with pytest.raises(XapiError) as err:
        download(dom0, glance, corrupt, retries="1")
    assert err.value.code == "GLANCE_BAD_IMAGE"
    assert "sha512 is " in err.value.params[0] and "Glance recorded " + "f" * 128 in err.value.params[0]
    assert "in each of 2 attempts" in err.value.params[0]
    assert sr_files(dom0) == before and staging_leftovers(dom0) == []


def test_download_verifies_md5_without_a_usable_multihash(dom0, tmp_path):
    """An older Glance (no os_hash_*) or an algorithm dom0 lacks: the MD5 checksum is checked."""
    glance = GlanceServer(hash_algo=None)
    try:
        raw = os.urandom(3 * MiB)
        image_id = glance.add(raw, "raw", "bare")
        download(dom0, glance, image_id)
        assert f"({len(raw)} bytes, raw, md5 verified)" in _log(dom0)
        unknown = glance.add(raw, "raw", "bare")
        glance.images[unknown].update(os_hash_algo="no-such-hash", os_hash_value="ab")
        download(dom0, glance, unknown)
        assert "cannot compute Glance's no-such-hash hash" in _log(dom0)
        glance.images[unknown]["checksum"] = "0" * 32
        before = sr_files(dom0)
        with pytest.raises(XapiError) as err:
            download(dom0, glance, unknown, retries="0")
        assert err.value.code == "GLANCE_BAD_IMAGE" and "md5 is " in err.value.params[0]
        assert sr_files(dom0) == before
    finally:
        glance.stop()


def test_unreachable_endpoint(dom0):
    with pytest.raises(XapiError) as err:
        call(
            dom0,
            "glance",
            "download_vhd",
            image_id=str(uuid.uuid4()),
            endpoint="http://127.0.0.1:9",
            sr_path=sr_arg(dom0),
            retries="0",
        )
    assert err.value.code == "GLANCE_UNREACHABLE"


@pytest.mark.parametrize(
    "names",
    [{0: "../../../etc/evil.vhd"}, {0: "/etc/evil.vhd"}, {1: "run.sh"}, {0: "1.vhd", 1: "1.vhd"}],
    ids=["traversal", "absolute", "stray", "duplicate"],
)
def test_malicious_archive_is_refused(dom0, glance, tmp_path, names):
    paths, _ = build_chain(tmp_path, levels=2)
    image_id = glance.add(tgz_of(paths, names), "vhd", "ovf")
    before = sr_files(dom0)
    with pytest.raises(XapiError) as err:
        download(dom0, glance, image_id)
    assert err.value.code == "GLANCE_BAD_IMAGE"
    assert sr_files(dom0) == before
    assert staging_leftovers(dom0) == []
    assert not dom0.path("/etc/evil.vhd").exists() and not os.path.exists("/etc/evil.vhd")


def test_symlink_member_is_refused(dom0, glance):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        member = tarfile.TarInfo("0.vhd")
        member.type = tarfile.SYMTYPE
        member.linkname = "/etc/shadow"
        archive.addfile(member)
    image_id = glance.add(buffer.getvalue(), "vhd", "ovf")
    with pytest.raises(XapiError) as err:
        download(dom0, glance, image_id)
    assert err.value.code == "GLANCE_BAD_IMAGE"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("endpoint", "file:///etc/passwd"),
        ("endpoint", "http://user:pw@127.0.0.1:1"),
        ("endpoint", "http://127.0.0.1:1/v1?x=1"),
        ("endpoint", "http://-oops"),
        ("image_id", "../../x"),
        ("sr_path", "/var/run/sr-mount/../../etc"),
        ("retries", "-1"),
        ("token", "a\r\nX-Evil: 1"),
        ("ca_file", "/etc/../../../root/ca.pem"),
        ("uuid_stack", '["x"]'),
    ],
)
def test_download_bad_arguments(dom0, glance, name, value):
    args = dict(
        image_id=str(uuid.uuid4()), endpoint=glance.endpoint, sr_path=sr_arg(dom0), token=glance.token
    )
    args[name] = value
    with pytest.raises(XapiError) as err:
        call(dom0, "glance", "download_vhd", **args)
    assert err.value.code == "INVALID_ARGUMENT"
    assert err.value.params[0].startswith(name)
    assert glance.requests == []


def test_upload_bad_compression_level(dom0, glance):
    with pytest.raises(XapiError) as err:
        call(
            dom0,
            "glance",
            "upload_vhd",
            image_id=glance.queued(disk_format="vhd", container_format="ovf"),
            endpoint=glance.endpoint,
            sr_path=sr_arg(dom0),
            vdi_uuids=json.dumps([str(uuid.uuid4())]),
            compression_level="10",
        )
    assert err.value.params[0] == "compression_level"


@pytest.fixture
def tls_glance(tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    server = GlanceServer(tls=context)
    server.cert = cert
    try:
        yield server
    finally:
        server.stop()


def test_tls_verification(dom0, tls_glance, tmp_path):
    paths, content = build_chain(tmp_path, levels=1)
    image_id = tls_glance.add(tgz_of(paths), "vhd", "ovf")
    with pytest.raises(XapiError) as err:
        download(dom0, tls_glance, image_id)
    assert err.value.code == "GLANCE_TLS_ERROR"
    ca = dom0.path("/etc/pki/glance-ca.pem")
    ca.parent.mkdir(parents=True)
    ca.write_bytes(tls_glance.cert.read_bytes())
    result = download(dom0, tls_glance, image_id, ca_file="/etc/pki/glance-ca.pem")
    assert read_leaf(dom0, result["root"]["uuid"]) == content
    result = download(dom0, tls_glance, image_id, verify="false")
    assert read_leaf(dom0, result["root"]["uuid"]) == content


def _progress_lines(sandbox, what: str) -> list[int]:
    log = sandbox.root / "var" / "log" / "xenapi-driver-plugins.log"
    found = re.findall(rf"{re.escape(what)}: (\d+)% ", log.read_text())
    return [int(percent) for percent in found]


def test_download_and_upload_log_progress_every_ten_percent(hosts, glance, tmp_path):
    src = hosts.new("127.0.0.1", "src")
    raw = os.urandom(24 * MiB)  # many reads per tenth, so every tenth is its own line
    image_id = glance.add(raw, "raw", "bare")
    download(src, glance, image_id)
    assert _progress_lines(src, f"download of image {image_id}") == list(range(10, 101, 10))

    paths, _ = build_chain(src.sr_path())
    upload_id = glance.queued(disk_format="vhd", container_format="ovf")
    call(
        src,
        "glance",
        "upload_vhd",
        image_id=upload_id,
        endpoint=glance.endpoint,
        sr_path=sr_arg(src),
        token=glance.token,
        vdi_uuids=json.dumps([p.name[:-4] for p in paths]),
    )
    assert _progress_lines(src, f"upload of image {upload_id}") == list(range(10, 101, 10))
