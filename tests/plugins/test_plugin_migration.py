"""migration plug-in: transfer_vhd + move_vhds_into_sr, run as processes in dom0 sandboxes."""

from __future__ import annotations

import json
import os
import random
import shutil
import uuid

import pytest
from plugin_helpers import call

from xenapi_driver import vhd
from xenapi_driver.simulator.dom0 import XapiError

MiB = 1024 * 1024


def make_chain(sandbox, levels: int = 3, size: int = 8 * MiB, seed: int = 5) -> tuple[list[str], bytes]:
    """A VHD chain in the sandbox's local SR (leaf first), parents hidden; returns (uuids, content)."""
    rng = random.Random(seed)
    sr = sandbox.sr_path()
    uuids = [str(uuid.uuid4()) for _ in range(levels)]
    base = sr / f"{uuids[-1]}.vhd"
    vhd.create_dynamic(str(base), size)
    for level in range(levels - 1, -1, -1):
        path = sr / f"{uuids[level]}.vhd"
        if level != levels - 1:
            vhd.snapshot(str(path), str(sr / f"{uuids[level + 1]}.vhd"))
        with vhd.open_chain(str(path)) as chain:
            for _ in range(6):
                offset = rng.randrange(0, size // 4096) * 4096
                chain.write(offset, rng.randbytes(4096 * rng.randint(1, 64))[: size - offset])
        if level != levels - 1:
            vhd.set_hidden(str(sr / f"{uuids[level + 1]}.vhd"), True)
    with vhd.open_chain(str(sr / f"{uuids[0]}.vhd"), writable=False) as chain:
        content = chain.read(0, size)
    return uuids, content


def read_chain(path) -> bytes:
    with vhd.open_chain(str(path), writable=False) as chain:
        return chain.read(0, chain.virtual_size)


def sr_arg(sandbox) -> str:
    return f"/var/run/sr-mount/{sandbox.local_sr_uuid}"


def sr_listing(sandbox) -> dict[str, int]:
    return {
        p.name: p.stat().st_size for p in sandbox.sr_path().iterdir() if p.is_file() and not p.is_symlink()
    }


def transfer_chain(src, dest_address: str, instance: str, uuids: list[str]) -> list[dict]:
    return [
        json.loads(
            call(
                src,
                "migration",
                "transfer_vhd",
                instance_uuid=instance,
                host=dest_address,
                vdi_uuid=vdi,
                sr_path=sr_arg(src),
                seq_num=str(seq),
            )
        )
        for seq, vdi in enumerate(uuids)
    ]


@pytest.fixture
def ssh_pair(hosts):
    """Two dom0s with root SSH trust from src to dst; dst's sshd listens on 127.0.0.2."""
    src = hosts.new("127.0.0.1", "src")
    dst = hosts.new("127.0.0.2", "dst")
    dst.start_sshd("127.0.0.2")
    src.trust(dst)
    return src, dst


def test_three_level_chain_over_openssh_reads_back_identically(ssh_pair):
    src, dst = ssh_pair
    uuids, content = make_chain(src)
    instance = str(uuid.uuid4())
    stats = transfer_chain(src, "127.0.0.2", instance, uuids)
    assert all(s["local"] is False for s in stats)
    received = dst.path(f"/images/instance{instance}")
    assert sorted(os.listdir(received)) == ["0.vhd", "1.vhd", "2.vhd"]
    assert not [p for p in src.sr_path().iterdir() if p.name.startswith(".xenapi-transfer")]
    new_uuids = [str(uuid.uuid4()) for _ in uuids]
    result = json.loads(
        call(
            dst,
            "migration",
            "move_vhds_into_sr",
            instance_uuid=instance,
            sr_path=sr_arg(dst),
            uuid_stack=json.dumps(new_uuids),
        )
    )
    assert result == {"root": {"uuid": new_uuids[0]}, "chain": new_uuids}
    leaf = dst.sr_path() / f"{new_uuids[0]}.vhd"
    assert read_chain(leaf) == content
    info = vhd.info(str(leaf))
    assert info.depth == 3 and not info.hidden
    assert vhd.info(str(dst.sr_path() / f"{new_uuids[1]}.vhd")).hidden
    assert info.parent_path == str(dst.sr_path() / f"{new_uuids[1]}.vhd")
    assert not received.exists()
    # the source chain is untouched
    assert read_chain(src.sr_path() / f"{uuids[0]}.vhd") == content


def test_imported_chain_reads_back_with_libvhdi(ssh_pair):
    pyvhdi = pytest.importorskip("pyvhdi")
    src, dst = ssh_pair
    uuids, content = make_chain(src, seed=11)
    instance = str(uuid.uuid4())
    transfer_chain(src, "127.0.0.2", instance, uuids)
    chain = json.loads(
        call(dst, "migration", "move_vhds_into_sr", instance_uuid=instance, sr_path=sr_arg(dst))
    )
    files = [pyvhdi.file() for _ in chain["chain"]]
    for handle, vdi in zip(files, chain["chain"], strict=True):
        handle.open(str(dst.sr_path() / f"{vdi}.vhd"))
    for child, parent in zip(files, files[1:], strict=False):
        child.set_parent(parent)
    data = files[0].read_buffer_at_offset(len(content), 0)
    for handle in files:
        handle.close()
    assert data == content


def test_resumed_transfer_does_not_resend_what_arrived(ssh_pair):
    src, dst = ssh_pair
    uuids, _ = make_chain(src, levels=1, size=16 * MiB, seed=3)
    source = src.sr_path() / f"{uuids[0]}.vhd"
    with vhd.open_chain(str(source)) as chain:
        chain.write(0, random.Random(1).randbytes(12 * MiB))
    instance = str(uuid.uuid4())
    # What an interrupted rsync --partial leaves: the first part of the file under its name.
    received = dst.path(f"/images/instance{instance}")
    received.mkdir(parents=True)
    total = source.stat().st_size
    arrived = total * 3 // 4
    with open(source, "rb") as full, open(received / "0.vhd", "wb") as partial:
        partial.write(full.read(arrived))
    (stats,) = transfer_chain(src, "127.0.0.2", instance, uuids)
    assert (received / "0.vhd").read_bytes() == source.read_bytes()
    assert stats["file_size"] == total
    assert stats["matched_bytes"] >= arrived - 64 * 1024
    assert stats["literal_bytes"] <= total - arrived + 64 * 1024


def test_local_destination_uses_local_rsync(hosts):
    dom0 = hosts.new("127.0.0.1", "local")
    uuids, content = make_chain(dom0, seed=8)
    instance = str(uuid.uuid4())
    stats = transfer_chain(dom0, "127.0.0.1", instance, uuids)
    assert all(s["local"] for s in stats)
    result = json.loads(
        call(dom0, "migration", "move_vhds_into_sr", instance_uuid=instance, sr_path=sr_arg(dom0))
    )
    assert read_chain(dom0.sr_path() / f"{result['root']['uuid']}.vhd") == content
    assert len(set(result["chain"]) | set(uuids)) == 6


def test_unreachable_destination_fails_and_cleans_staging(hosts):
    src = hosts.new("127.0.0.1", "src")
    hosts.new("127.0.0.3", "nosshd")
    uuids, _ = make_chain(src, levels=1)
    before = sr_listing(src)
    with pytest.raises(XapiError) as err:
        transfer_chain(src, "127.0.0.3", str(uuid.uuid4()), uuids)
    assert err.value.code == "TRANSFER_FAILED"
    assert sr_listing(src) == before
    assert not [p for p in src.sr_path().iterdir() if p.name.startswith(".")]


def test_unknown_host_key_is_refused(ssh_pair):
    src, dst = ssh_pair
    (src.ssh_dir / "known_hosts").write_text("")
    uuids, _ = make_chain(src, levels=1)
    with pytest.raises(XapiError) as err:
        transfer_chain(src, "127.0.0.2", str(uuid.uuid4()), uuids)
    assert err.value.code == "TRANSFER_FAILED"
    assert "Host key verification failed" in err.value.params[-1]


BAD_TRANSFER_ARGS = [
    ("instance_uuid", "not-a-uuid"),
    ("instance_uuid", "../../etc"),
    ("host", "127.0.0.2; touch /tmp/pwned"),
    ("host", "-oProxyCommand=touch /tmp/pwned"),
    ("host", "$(reboot)"),
    ("vdi_uuid", "../../../etc/passwd"),
    ("sr_path", "/var/run/sr-mount/../../../etc"),
    ("sr_path", "/etc"),
    ("sr_path", "var/run/sr-mount/x"),
    ("seq_num", "-1"),
    ("seq_num", "1; ls"),
    ("seq_num", "x"),
]


@pytest.mark.parametrize(("name", "value"), BAD_TRANSFER_ARGS)
def test_transfer_rejects_bad_arguments(dom0, name, value):
    vdi = str(uuid.uuid4())
    (dom0.sr_path() / f"{vdi}.vhd").write_bytes(b"x")
    args = dict(
        instance_uuid=str(uuid.uuid4()), host="127.0.0.2", vdi_uuid=vdi, sr_path=sr_arg(dom0), seq_num="0"
    )
    args[name] = value
    before = sorted(p.name for p in dom0.root.rglob("*"))
    with pytest.raises(XapiError) as err:
        call(dom0, "migration", "transfer_vhd", **args)
    assert err.value.code == "INVALID_ARGUMENT"
    assert err.value.params[0] == name
    assert sorted(p.name for p in dom0.root.rglob("*") if "xenapi-driver-plugins.log" not in p.name) == [
        n for n in before if "xenapi-driver-plugins.log" not in n
    ]
    assert not os.path.exists("/tmp/pwned")


def test_transfer_of_missing_vhd(dom0):
    with pytest.raises(XapiError) as err:
        call(
            dom0,
            "migration",
            "transfer_vhd",
            instance_uuid=str(uuid.uuid4()),
            host="127.0.0.2",
            vdi_uuid=str(uuid.uuid4()),
            sr_path=sr_arg(dom0),
            seq_num="0",
        )
    assert err.value.code == "NOT_FOUND"


def test_missing_argument(dom0):
    with pytest.raises(XapiError) as err:
        call(dom0, "migration", "move_vhds_into_sr", sr_path=sr_arg(dom0))
    assert err.value.details == ["MISSING_ARGUMENT", "instance_uuid"]


# ------------------------------------------------------------- move_vhds_into_sr failures


@pytest.fixture
def received(dom0):
    """A chain received into /images/instance<uuid>/ as 0.vhd (leaf) .. 2.vhd (base)."""
    uuids, content = make_chain(dom0, seed=21)
    instance = str(uuid.uuid4())
    target = dom0.path(f"/images/instance{instance}")
    target.mkdir(parents=True)
    for seq, vdi in enumerate(uuids):
        shutil.copy2(dom0.sr_path() / f"{vdi}.vhd", target / f"{seq}.vhd")
    return instance, target, content


def _move_fails(dom0, instance, code="VHD_CHAIN_INVALID", **extra):
    before = sr_listing(dom0)
    with pytest.raises(XapiError) as err:
        call(dom0, "migration", "move_vhds_into_sr", instance_uuid=instance, sr_path=sr_arg(dom0), **extra)
    assert err.value.code == code, err.value.details
    assert sr_listing(dom0) == before, "the SR must be left untouched"
    return " ".join(err.value.params)


def test_move_refuses_gaps(dom0, received):
    instance, target, _ = received
    (target / "1.vhd").unlink()
    assert "missing 1.vhd" in _move_fails(dom0, instance)


def test_move_refuses_wrong_order(dom0, received):
    instance, target, _ = received
    os.rename(target / "1.vhd", target / "tmp")
    os.rename(target / "2.vhd", target / "1.vhd")
    os.rename(target / "tmp", target / "2.vhd")
    assert "parent" in _move_fails(dom0, instance)


def test_move_refuses_incomplete_chain(dom0, received):
    instance, target, _ = received
    (target / "2.vhd").unlink()
    assert "incomplete" in _move_fails(dom0, instance)


def test_move_refuses_hidden_leaf(dom0, received):
    instance, target, _ = received
    vhd.set_hidden(str(target / "0.vhd"), True)
    assert "hidden" in _move_fails(dom0, instance)


def test_move_refuses_stray_files(dom0, received):
    instance, target, _ = received
    (target / "evil.sh").write_text("#!/bin/sh\n")
    assert "evil.sh" in _move_fails(dom0, instance)


def test_move_refuses_corrupt_vhd(dom0, received):
    instance, target, _ = received
    with open(target / "1.vhd", "r+b") as handle:
        handle.seek(-512, os.SEEK_END)
        handle.write(b"garbage!" * 64)
    _move_fails(dom0, instance)


def test_move_refuses_uuid_collision(dom0, received):
    instance, _, _ = received
    existing = next(iter(sr_listing(dom0)))[:-4]
    stack = [str(uuid.uuid4()), existing, str(uuid.uuid4())]
    _move_fails(dom0, instance, code="ALREADY_EXISTS", uuid_stack=json.dumps(stack))


def test_move_refuses_wrong_uuid_count(dom0, received):
    instance, _, _ = received
    _move_fails(dom0, instance, uuid_stack=json.dumps([str(uuid.uuid4())]))


@pytest.mark.parametrize(
    "stack",
    ['["not-a-uuid"]', "[1, 2]", "not json", '"x"', '["../x"]'],
    ids=["nonuuid", "ints", "nojson", "str", "dots"],
)
def test_move_rejects_bad_uuid_stack(dom0, received, stack):
    instance, _, _ = received
    _move_fails(dom0, instance, code="INVALID_ARGUMENT", uuid_stack=stack)


def test_move_then_retry_after_fix(dom0, received):
    """A failed import leaves the received files so a corrected retry succeeds."""
    instance, target, content = received
    (target / "junk").write_text("x")
    _move_fails(dom0, instance)
    (target / "junk").unlink()
    result = json.loads(
        call(dom0, "migration", "move_vhds_into_sr", instance_uuid=instance, sr_path=sr_arg(dom0))
    )
    assert read_chain(dom0.sr_path() / f"{result['root']['uuid']}.vhd") == content


def test_cleanup_received(dom0, received):
    instance, target, _ = received
    assert json.loads(call(dom0, "migration", "cleanup_received", instance_uuid=instance)) == {
        "removed": True
    }
    assert not target.exists()


def test_interrupted_transfer_cleans_up(hosts):
    """A plug-in stopped by SIGTERM (as XAPI stops it) still removes its staging and its rsync."""
    import socket
    import subprocess

    src = hosts.new("127.0.0.1", "src")
    uuids, _ = make_chain(src, levels=1)
    silent = socket.socket()
    silent.bind(("127.0.0.4", 0))
    silent.listen(1)  # accepts TCP, never speaks SSH: ssh waits for the banner
    (src.ssh_dir / "config").write_text(
        f"Host 127.0.0.4\n    Port {silent.getsockname()[1]}\n    ConnectTimeout 60\n"
    )
    try:
        with pytest.raises(XapiError) as err:
            call(src, "migration", "transfer_vhd", _timeout=3, instance_uuid=str(uuid.uuid4()),
                 host="127.0.0.4", vdi_uuid=uuids[0], sr_path=sr_arg(src), seq_num="0")  # fmt: skip
    finally:
        silent.close()
    assert err.value.params[0] == "timeout"
    assert not [p for p in src.sr_path().iterdir() if p.name.startswith(".xenapi-transfer")]
    left = subprocess.run(["pgrep", "-f", str(src.sr_path())], capture_output=True, text=True).stdout
    assert left.strip() == ""


def test_stale_staging_of_a_killed_transfer_is_removed(dom0):
    old = dom0.sr_path() / ".xenapi-transfer-old"
    old.mkdir()
    (old / "0.vhd").write_bytes(b"x")
    os.utime(old, (1, 1))
    recent = dom0.sr_path() / ".xenapi-transfer-running"
    recent.mkdir()
    uuids, _ = make_chain(dom0, levels=1)
    call(dom0, "migration", "transfer_vhd", instance_uuid=str(uuid.uuid4()), host="127.0.0.1",
         vdi_uuid=uuids[0], sr_path=sr_arg(dom0), seq_num="0")  # fmt: skip
    assert not old.exists() and recent.exists()


def test_move_refuses_truncated_leaf(dom0, received):
    instance, target, _ = received
    data = (target / "0.vhd").read_bytes()
    (target / "0.vhd").write_bytes(data[: len(data) - 3 * 512])
    assert "0.vhd" in _move_fails(dom0, instance)


# ------------------------------------------------------------- parents the destination holds


def _unique_id(path) -> str:
    return vhd.info(str(path), require_parents=False).uuid


def _held_copy(src, dst, uuids) -> list[str]:
    """Copy the two parents of ``uuids`` into dst's SR under new VDI UUIDs (as an image cache
    on dst would hold the same image base copies): same bytes, same unique ids."""
    new = [str(uuid.uuid4()) for _ in uuids[1:]]
    for vdi, copy in zip(uuids[1:], new, strict=True):
        shutil.copy2(src.sr_path() / f"{vdi}.vhd", dst.sr_path() / f"{copy}.vhd")
    if len(new) > 1:
        vhd.reparent(str(dst.sr_path() / f"{new[0]}.vhd"), str(dst.sr_path() / f"{new[1]}.vhd"))
    return new


def _identities(sandbox, **filters) -> dict:
    args = {k: json.dumps(v) for k, v in filters.items()}
    return json.loads(call(sandbox, "migration", "vhd_identities", sr_path=sr_arg(sandbox), **args))


def test_vhd_identities_reports_only_hidden_intact_vhds(dom0):
    uuids, _ = make_chain(dom0, levels=3, seed=31)
    result = _identities(dom0, vdi_uuids=uuids)
    by_vdi = {v["vdi_uuid"]: v for v in result["vhds"]}
    assert set(by_vdi) == set(uuids[1:])  # the leaf is writable: never reported
    assert [i["vdi_uuid"] for i in result["ignored"]] == [uuids[0]]
    assert "writable" in result["ignored"][0]["reason"]
    middle = by_vdi[uuids[1]]
    path = dom0.sr_path() / f"{uuids[1]}.vhd"
    assert middle["unique_id"] == _unique_id(path)
    assert middle["physical_size"] == path.stat().st_size
    assert middle["virtual_size"] == 8 * MiB
    assert middle["parent_vdi_uuid"] == uuids[2]
    assert middle["parent_unique_id"] == by_vdi[uuids[2]]["unique_id"]
    assert by_vdi[uuids[2]]["parent_vdi_uuid"] is None
    # by unique id: only the matching base copy, the rest of the SR is not reported
    only = _identities(dom0, unique_ids=[middle["unique_id"]])
    assert [v["vdi_uuid"] for v in only["vhds"]] == [uuids[1]]
    # a hidden copy nothing depends on is garbage the next SR scan deletes: not reported
    orphan = str(uuid.uuid4())
    shutil.copy2(path, dom0.sr_path() / f"{orphan}.vhd")
    again = _identities(dom0, unique_ids=[middle["unique_id"]])
    assert [v["vdi_uuid"] for v in again["vhds"]] == [uuids[1]]
    assert [(i["vdi_uuid"], "no children" in i["reason"]) for i in again["ignored"]] == [(orphan, True)]


@pytest.mark.parametrize("where", ["footer", "footer_copy", "header"])
def test_vhd_identities_ignores_a_damaged_vhd(dom0, where):
    uuids, _ = make_chain(dom0, levels=2, seed=32)
    path = dom0.sr_path() / f"{uuids[1]}.vhd"
    uid = _unique_id(path)
    offset = {"footer": path.stat().st_size - 512 + 40, "footer_copy": 40, "header": 512 + 8}[where]
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))
    result = _identities(dom0, unique_ids=[uid])
    assert result["vhds"] == []
    assert result["ignored"][0]["vdi_uuid"] == uuids[1]
    assert "damaged" in result["ignored"][0]["reason"]


def test_move_onto_a_held_base_sends_and_changes_nothing_of_it(ssh_pair):
    src, dst = ssh_pair
    uuids, content = make_chain(src, levels=3, seed=33)
    held = _held_copy(src, dst, uuids)
    held_path = dst.sr_path() / f"{held[0]}.vhd"
    before = (held_path.stat().st_ino, held_path.stat().st_mtime_ns, held_path.read_bytes())
    instance = str(uuid.uuid4())
    # only the leaf: its parent (and that parent's own parent) are held by dst already
    stats = transfer_chain(src, "127.0.0.2", instance, uuids[:1])
    assert len(stats) == 1
    new_uuids = [str(uuid.uuid4())]
    result = json.loads(
        call(dst, "migration", "move_vhds_into_sr", instance_uuid=instance, sr_path=sr_arg(dst),
             uuid_stack=json.dumps(new_uuids), base_vdi_uuid=held[0],
             base_physical_size=str(held_path.stat().st_size))
    )  # fmt: skip
    assert result["chain"] == new_uuids
    leaf = dst.sr_path() / f"{new_uuids[0]}.vhd"
    assert read_chain(leaf) == content
    vhd.check(str(leaf), walk_parents=True)
    assert vhd.info(str(leaf)).depth == 3
    assert vhd.info(str(leaf)).parent_path == str(held_path)
    assert (held_path.stat().st_ino, held_path.stat().st_mtime_ns, held_path.read_bytes()) == before
    assert not [p for p in dst.sr_path().iterdir() if p.is_symlink()]


@pytest.mark.parametrize("problem", ["other_uid", "visible", "damaged", "size", "missing"])
def test_move_refuses_a_base_it_cannot_use(dom0, received, problem):
    instance, target, _ = received
    (target / "2.vhd").unlink()  # 1.vhd's parent stays behind: the held base must provide it
    base = str(uuid.uuid4())
    path = dom0.sr_path() / f"{base}.vhd"
    other = {"other_uid": str(uuid.uuid4())}.get(problem)
    if problem != "missing":
        vhd.create_dynamic(str(path), 8 * MiB)
        if other is None:
            vhd.set_uuid(str(path), vhd.info(str(target / "1.vhd"), require_parents=False).parent_uuid)
        vhd.set_hidden(str(path), problem != "visible")
    if problem == "damaged":
        with open(path, "r+b") as handle:
            handle.seek(512 + 20)
            handle.write(b"\xff\xff")
    extra = {"base_vdi_uuid": base}
    if problem == "size":
        extra["base_physical_size"] = str(path.stat().st_size + 512)
    code = "NOT_FOUND" if problem == "missing" else "VHD_CHAIN_INVALID"
    _move_fails(dom0, instance, code=code, **extra)


def test_create_child_on_a_held_base(dom0):
    uuids, content = make_chain(dom0, levels=2, seed=34)
    base = dom0.sr_path() / f"{uuids[1]}.vhd"
    before = (base.stat().st_ino, base.stat().st_mtime_ns, base.read_bytes())
    with vhd.open_chain(str(base), writable=False) as chain:
        base_content = chain.read(0, chain.virtual_size)
    child = str(uuid.uuid4())
    result = json.loads(call(dom0, "migration", "create_child", sr_path=sr_arg(dom0), base_vdi_uuid=uuids[1],
                             vdi_uuid=child, base_physical_size=str(base.stat().st_size)))  # fmt: skip
    assert result == {"uuid": child}
    made = dom0.sr_path() / f"{child}.vhd"
    assert read_chain(made) == base_content != content
    assert not vhd.info(str(made)).hidden
    assert (base.stat().st_ino, base.stat().st_mtime_ns, base.read_bytes()) == before
    with pytest.raises(XapiError) as err:  # a writable leaf is never a base
        call(dom0, "migration", "create_child", sr_path=sr_arg(dom0), base_vdi_uuid=uuids[0],
             vdi_uuid=str(uuid.uuid4()))  # fmt: skip
    assert err.value.code == "VHD_CHAIN_INVALID"
    with pytest.raises(XapiError) as err:
        call(dom0, "migration", "create_child", sr_path=sr_arg(dom0), base_vdi_uuid=uuids[1], vdi_uuid=child)
    assert err.value.code == "ALREADY_EXISTS"


@pytest.mark.parametrize(
    ("fn", "name", "value"),
    [
        ("vhd_identities", "sr_path", "/etc"),
        ("vhd_identities", "unique_ids", '["../x"]'),
        ("vhd_identities", "unique_ids", "not json"),
        ("vhd_identities", "vdi_uuids", '["a/b"]'),
        ("create_child", "base_vdi_uuid", "../../etc/passwd"),
        ("create_child", "vdi_uuid", "x; reboot"),
        ("create_child", "base_physical_size", "-1"),
        ("move_vhds_into_sr", "base_vdi_uuid", "../x"),
        ("move_vhds_into_sr", "base_physical_size", "12ab"),
    ],
)
def test_held_base_functions_reject_bad_arguments(dom0, fn, name, value):
    args = {"sr_path": sr_arg(dom0)}
    if fn == "create_child":
        args.update(base_vdi_uuid=str(uuid.uuid4()), vdi_uuid=str(uuid.uuid4()))
    if fn == "move_vhds_into_sr":
        args.update(instance_uuid=str(uuid.uuid4()))
    args[name] = value
    with pytest.raises(XapiError) as err:
        call(dom0, "migration", fn, **args)
    assert err.value.code == "INVALID_ARGUMENT"
    assert err.value.params[0].startswith(name)


def test_parents_in_one_rsync_then_the_leaf_read_back_identically(ssh_pair):
    """transfer_vhds sends a chain's parents in one run (one SSH session); the leaf follows alone."""
    src, dst = ssh_pair
    uuids, content = make_chain(src)
    instance = str(uuid.uuid4())
    members = [{"vdi_uuid": uuids[seq], "seq_num": seq} for seq in (2, 1)]
    batch = json.loads(
        call(src, "migration", "transfer_vhds", instance_uuid=instance, host="127.0.0.2",
             sr_path=sr_arg(src), members=json.dumps(members))
    )  # fmt: skip
    sizes = {str(seq): (src.sr_path() / f"{uuids[seq]}.vhd").stat().st_size for seq in (1, 2)}
    assert batch["files"] == sizes and batch["local"] is False
    assert batch["literal_bytes"] == sum(sizes.values())
    transfer_chain(src, "127.0.0.2", instance, uuids[:1])  # the leaf, as after power-off
    received = dst.path(f"/images/instance{instance}")
    assert sorted(os.listdir(received)) == ["0.vhd", "1.vhd", "2.vhd"]
    assert not [p for p in src.sr_path().iterdir() if p.name.startswith(".xenapi-transfer")]
    new_uuids = [str(uuid.uuid4()) for _ in uuids]
    call(dst, "migration", "move_vhds_into_sr", instance_uuid=instance, sr_path=sr_arg(dst),
         uuid_stack=json.dumps(new_uuids))  # fmt: skip
    assert read_chain(dst.sr_path() / f"{new_uuids[0]}.vhd") == content


A, B = str(uuid.uuid4()), str(uuid.uuid4())


@pytest.mark.parametrize(
    "members, name",
    [
        ("[]", "members"),
        ('{"vdi_uuid": "x"}', "members"),
        ('["not an object"]', "members[0]"),
        ('[{"vdi_uuid": "../../etc/passwd", "seq_num": 1}]', "members[0].vdi_uuid"),
        (json.dumps([{"vdi_uuid": A, "seq_num": "1; ls"}]), "members[0].seq_num"),
        (json.dumps([{"vdi_uuid": A, "seq_num": -1}]), "members[0].seq_num"),
        (json.dumps([{"vdi_uuid": A, "seq_num": 1}, {"vdi_uuid": B, "seq_num": 1}]), "members"),
        ("not json", "members"),
    ],
)  # fmt: skip
def test_transfer_vhds_rejects_bad_members(dom0, members, name):
    with pytest.raises(XapiError) as err:
        call(dom0, "migration", "transfer_vhds", instance_uuid=str(uuid.uuid4()), host="127.0.0.2",
             sr_path=sr_arg(dom0), members=members)  # fmt: skip
    assert err.value.code == "INVALID_ARGUMENT"
    assert err.value.params[0] == name
    assert not [p for p in dom0.sr_path().iterdir() if p.name.startswith(".xenapi-transfer")]
