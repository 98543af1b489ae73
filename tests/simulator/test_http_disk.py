"""GET /export_raw_vdi and PUT /import_raw_vdi as XAPI serves them, with real VHD streams."""

from __future__ import annotations

import http.client
import io
import os
import urllib.error
import urllib.request
from urllib.parse import urlencode, urlsplit

import pytest

from xenapi_driver import vhd

MiB = 1024**2


def new_vdi(x, sr, size=8 * MiB):
    return x.VDI.create(
        {
            "SR": sr,
            "virtual_size": str(size),
            "type": "user",
            "sharable": False,
            "read_only": False,
            "other_config": {},
            "name_label": "http",
            "name_description": "",
        }
    )


def put(url, session, body, **query):
    query = {"session_id": session, **query}
    req = urllib.request.Request(
        f"{url.rstrip('/')}/import_raw_vdi?{urlencode(query)}", data=body, method="PUT"
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.status, dict(resp.headers)


def get(url, session, **query):
    query = {"session_id": session, **query}
    with urllib.request.urlopen(f"{url.rstrip('/')}/export_raw_vdi?{urlencode(query)}", timeout=30) as resp:
        return resp.read(), dict(resp.headers)


@pytest.fixture
def sid(session):
    return session._session


def test_raw_round_trip_with_task(xapi, sim, sid):
    vdi = new_vdi(xapi, sim.pool.master.local_sr)
    data = os.urandom(MiB) + b"\0" * MiB + os.urandom(MiB)
    task = xapi.task.create("import", "")
    status, headers = put(sim.url, sid, data, vdi=vdi, format="raw", task_id=task)
    assert status == 200 and headers.get("task-id") == task
    assert xapi.task.get_status(task) == "success" and vdi in xapi.task.get_result(task)
    body, headers = get(sim.url, sid, vdi=xapi.VDI.get_uuid(vdi), format="raw")
    assert (
        len(body) == 8 * MiB and body[: len(data)] == data and body[len(data) :] == bytes(8 * MiB - len(data))
    )
    assert int(headers["Content-Length"]) == 8 * MiB
    assert int(xapi.VDI.get_physical_utilisation(vdi)) > 2 * MiB


def test_vhd_export_is_a_valid_vhd_and_imports_back(xapi, sim, sid, tmp_path):
    sr = sim.pool.master.local_sr
    src = new_vdi(xapi, sr)
    data = os.urandom(64 * 1024)
    put(sim.url, sid, data, vdi=src, format="raw")
    stream, _ = get(sim.url, sid, vdi=src, format="vhd")
    path = tmp_path / "exported.vhd"
    path.write_bytes(stream)
    info = vhd.info(str(path))
    assert info.disk_type == "dynamic" and info.virtual_size == 8 * MiB
    vhd.check(str(path))
    with vhd.open_chain(str(path)) as chain:
        assert chain.read(0, len(data)) == data
    dst = new_vdi(xapi, sr)
    assert put(sim.url, sid, stream, vdi=dst, format="vhd")[0] == 200
    assert get(sim.url, sid, vdi=dst, format="raw")[0][: len(data)] == data


def test_differential_export_since_a_snapshot(xapi, sim, sid, tmp_path):
    sr = sim.pool.master.local_sr
    disk = new_vdi(xapi, sr)
    first = os.urandom(MiB)
    put(sim.url, sid, first, vdi=disk, format="raw")
    snap = xapi.VDI.snapshot(disk, {})
    # After the snapshot only block 2 changes (applied as a one-block VHD stream).
    local = tmp_path / "change.vhd"
    vhd.create_dynamic(str(local), 8 * MiB)
    with vhd.open_chain(str(local)) as chain:
        chain.write(4 * MiB, os.urandom(MiB))
    change = io.BytesIO()
    vhd.export_vhd_stream(str(local), change)
    put(sim.url, sid, change.getvalue(), vdi=disk, format="vhd")
    full, _ = get(sim.url, sid, vdi=disk, format="vhd")
    delta, _ = get(sim.url, sid, vdi=disk, format="vhd", base=snap)
    assert len(delta) < len(full)
    # Restoring a chain: import the full base, then the delta, into one VDI.
    base_stream, _ = get(sim.url, sid, vdi=snap, format="vhd")
    restored = new_vdi(xapi, sr)
    put(sim.url, sid, base_stream, vdi=restored, format="vhd")
    put(sim.url, sid, delta, vdi=restored, format="vhd")
    assert get(sim.url, sid, vdi=restored, format="raw")[0] == get(sim.url, sid, vdi=disk, format="raw")[0]


def test_redirects_to_the_host_that_sees_the_sr(xapi, sim, sid):
    member = sim.pool.hosts[1]
    vdi = new_vdi(xapi, member.local_sr, 2 * MiB)
    parts = urlsplit(sim.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    conn.request("GET", f"/export_raw_vdi?{urlencode({'session_id': sid, 'vdi': vdi, 'format': 'raw'})}")
    resp = conn.getresponse()
    resp.read()
    conn.close()
    assert resp.status == 302
    assert resp.getheader("Location").startswith(member.url.rstrip("/") + "/export_raw_vdi?")
    body, _ = get(sim.url, sid, vdi=vdi, format="raw")  # urllib follows the redirect
    assert len(body) == 2 * MiB
    conn = http.client.HTTPConnection(member.address, member.port, timeout=30)
    conn.request("HEAD", f"/export_raw_vdi?{urlencode({'session_id': sid, 'vdi': vdi, 'format': 'raw'})}")
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("Content-Length") == str(2 * MiB) and resp.read() == b""
    conn.close()


def test_errors(xapi, sim, sid):
    vdi = new_vdi(xapi, sim.pool.master.local_sr, 2 * MiB)
    with pytest.raises(urllib.error.HTTPError) as err:
        get(sim.url, "OpaqueRef:bogus", vdi=vdi, format="raw")
    assert err.value.code == 401
    task = xapi.task.create("bad", "")
    with pytest.raises(urllib.error.HTTPError) as err:
        put(sim.url, sid, b"not a vhd" * 100, vdi=vdi, format="vhd", task_id=task)
    assert err.value.code == 500
    assert xapi.task.get_status(task) == "failure" and xapi.task.get_error_info(task)
    with pytest.raises(urllib.error.HTTPError):
        get(sim.url, sid, vdi=vdi, format="qcow9")
    big = io.BytesIO(os.urandom(3 * MiB)).getvalue()
    with pytest.raises(urllib.error.HTTPError):
        put(sim.url, sid, big, vdi=vdi, format="raw")  # larger than the disk


def test_raw_import_and_export_of_an_iscsi_lun(xapi, sim, sid):
    import uuid as uuidlib

    from xenapi_driver.simulator import sr_backend

    iqn = "iqn.2010-10.org.openstack:volume-http"
    scsi = sr_backend.create_lun(sim.world.iscsi_root, iqn, 0, 2 * MiB)
    sr = xapi.SR.introduce(str(uuidlib.uuid4()), "vol", "", "iscsi", "", False, {})
    config = {"target": "127.0.0.1", "targetIQN": iqn, "SCSIid": scsi}
    pbd = xapi.PBD.create(
        {"host": sim.pool.master.ref, "SR": sr, "device_config": config, "other_config": {}}
    )
    xapi.PBD.plug(pbd)
    xapi.SR.scan(sr)
    (vdi,) = xapi.SR.get_VDIs(sr)
    data = os.urandom(MiB)
    put(sim.url, sid, data, vdi=vdi, format="raw")
    body, _ = get(sim.url, sid, vdi=vdi, format="raw")
    assert body[:MiB] == data and len(body) == 2 * MiB
    with pytest.raises(urllib.error.HTTPError):
        put(sim.url, sid, os.urandom(3 * MiB), vdi=vdi, format="raw")
    with pytest.raises(urllib.error.HTTPError):
        put(sim.url, sid, b"x" * 512, vdi=vdi, format="vhd")
    xapi.PBD.unplug(pbd)
    xapi.SR.forget(sr)
