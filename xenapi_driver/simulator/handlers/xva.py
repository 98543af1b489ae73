"""Whole-VM export and import as XVA: ``GET /export`` and ``PUT /import``.

An XVA is an uncompressed tar stream, as XAPI writes it: ``ova.xml`` first (one XML-RPC
``<value>`` struct: ``version`` and ``objects``, each object ``{class, id, snapshot}`` with
references between exported objects rewritten to ``Ref:<n>`` ids), then each disk's data as
1 MiB chunks ``Ref:<n>/00000000``, ``Ref:<n>/00000001`` ... each followed by
``Ref:<n>/<chunk>.checksum`` (its SHA-1 in hex).  All-zero chunks are left out, except the
last one, which says how large the disk is.

``GET /export?session_id=&task_id=&uuid=<vm uuid>`` (or ``ref=``) exports a halted VM, template
or snapshot with its disks, VBDs, VIFs and their SRs and networks (not its snapshots).
``PUT /import?session_id=&task_id=&sr_id=<sr ref>[&restore=true]`` creates the VM (a new UUID
unless ``restore``), its disks in ``sr_id`` (else the pool's default SR), VBDs and VIFs (on the
network with the exported UUID or name, else a new one); the task's result is the list of
imported VM references.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import xmlrpc.client

from xenapi_driver import vhd
from xenapi_driver.simulator import tasks
from xenapi_driver.simulator.errors import XapiError
from xenapi_driver.simulator.handlers import storage
from xenapi_driver.simulator.handlers.http_disk import _Bounded, _Chunks, _fail_after_partial_read
from xenapi_driver.simulator.handlers.vif import refresh_vif
from xenapi_driver.simulator.handlers.vm_copy import _NOT_COPIED
from xenapi_driver.simulator.handlers.vm_metrics import ensure_metrics
from xenapi_driver.simulator.handlers.vm_state import HALTED, refresh_vm, vm_operation
from xenapi_driver.simulator.registry import http_handler
from xenapi_driver.simulator.schema import NULL_REF
from xenapi_driver.simulator.wire import xml_value

CHUNK = 1024 * 1024
EXPORT_VSN = "2"


# -- export ----------------------------------------------------------------------------------------
def _resolve_vm(db, query: dict) -> str:
    if query.get("ref"):
        db.get("VM", query["ref"])
        return query["ref"]
    if query.get("uuid"):
        return db.by_uuid("VM", query["uuid"])
    raise XapiError("INVALID_VALUE", "uuid", "")


def _objects(db, vm_ref: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``(class, ref)`` of everything exported, VM first; and ``(id, vdi)`` of the disks."""
    rec = db.get("VM", vm_ref)
    found: list[tuple[str, str]] = [("VM", vm_ref)]
    for vbd in rec["VBDs"]:
        found.append(("VBD", vbd))
        vdi = db.get("VBD", vbd)["VDI"]
        if not storage.is_null(vdi) and db.exists("VDI", vdi) and db.get("VBD", vbd)["type"] != "CD":
            found += [("VDI", vdi), ("SR", db.get("VDI", vdi)["SR"])]
    for vif in rec["VIFs"]:
        found += [("VIF", vif), ("network", db.get("VIF", vif)["network"])]
    unique = list(dict.fromkeys(found))
    return unique, [(f"Ref:{i}", ref) for i, (cls, ref) in enumerate(unique) if cls == "VDI"]


def _rewrite(value, ids: dict[str, str]):
    """References to exported objects become their ids; others become the null reference."""
    if isinstance(value, str) and value.startswith("OpaqueRef:"):
        return ids.get(value, NULL_REF)
    if isinstance(value, dict):
        return {k: _rewrite(v, ids) for k, v in value.items()}
    if isinstance(value, list):
        return [_rewrite(v, ids) for v in value]
    return value


def ova_xml(db, objects: list[tuple[str, str]]) -> bytes:
    ids = {ref: f"Ref:{i}" for i, (_, ref) in enumerate(objects)}
    version = {"hostname": "simulated", "product_version": "8.4.0", "product_brand": "XenServer",
               "xapi_major": "25", "xapi_minor": "0", "export_vsn": EXPORT_VSN}  # fmt: skip
    body = [
        {"class": cls, "id": ids[ref], "snapshot": _rewrite(db.record(cls, ref), ids)} for cls, ref in objects
    ]
    return xml_value({"version": version, "objects": body}).encode()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _add_disk(tar: tarfile.TarFile, disk_id: str, path: str, size: int) -> None:
    count = max(1, -(-size // CHUNK))
    with vhd.open_chain(path) as chain:
        for n in range(count):
            data = chain.read(n * CHUNK, min(CHUNK, size - n * CHUNK))
            if n < count - 1 and not any(data):
                continue
            _add(tar, f"{disk_id}/{n:08d}", data)
            _add(tar, f"{disk_id}/{n:08d}.checksum", hashlib.sha1(data).hexdigest().encode())  # noqa: S324


@http_handler("GET", "/export")
def export_vm(ctx, request) -> None:
    db = ctx.db
    vm_ref = _resolve_vm(db, request.query)
    if db.get("VM", vm_ref)["power_state"] != HALTED:
        raise XapiError("VM_BAD_POWER_STATE", vm_ref, "halted", db.get("VM", vm_ref)["power_state"].lower())
    with vm_operation(ctx, vm_ref, "export"):
        with db.lock:
            objects, disks = _objects(db, vm_ref)
            header = ova_xml(db, objects)
        for _, vdi in disks:
            if not isinstance(storage.vdi_backend(ctx.pool, vdi, ctx.world)[0], storage.FileSR):
                raise XapiError("VDI_INCOMPATIBLE_TYPE", vdi, "only VHD-backed disks can be exported")
        headers = {"Content-Type": "application/x-tar"}
        if ctx.task:
            headers["task-id"] = ctx.task
        request.start(200, headers)
        with tarfile.open(fileobj=request.wfile, mode="w|", format=tarfile.GNU_FORMAT) as tar:
            _add(tar, "ova.xml", header)
            for n, (disk_id, vdi) in enumerate(disks, 1):
                path = str(storage.disk_path(ctx.pool, vdi, ctx.world))
                _add_disk(tar, disk_id, path, int(db.get("VDI", vdi)["virtual_size"]))
                ctx.set_progress(n / len(disks))
    if ctx.task:
        tasks.succeed(db, ctx.task, None)
    request.wfile.flush()


# -- import ----------------------------------------------------------------------------------------
def parse_ova(data: bytes) -> dict:
    wrapped = b"<methodResponse><params><param>" + data + b"</param></params></methodResponse>"
    try:
        (value,), _ = xmlrpc.client.loads(wrapped.decode("utf-8"))
    except Exception as exc:  # noqa: BLE001 - any parse failure is a bad archive
        raise XapiError("IMPORT_ERROR", f"ova.xml is not an XVA header: {exc}") from None
    if not isinstance(value, dict) or not isinstance(value.get("objects"), list):
        raise XapiError("IMPORT_ERROR", "ova.xml has no objects")
    return value


class _Importer:
    """Creates the records of one XVA and writes its disk chunks; undoes everything on failure."""

    def __init__(self, ctx, sr_ref: str, restore: bool) -> None:
        self.ctx, self.db, self.sr, self.restore = ctx, ctx.db, sr_ref, restore
        self.refs: dict[str, str] = {}  # XVA id -> new ref
        self.created: list[tuple[str, str]] = []
        self.chains: dict[str, object] = {}
        self.last: tuple[str, bytes] | None = None

    def records(self, objects: list[dict]) -> str:
        by_class: dict[str, list[dict]] = {}
        for obj in objects:
            by_class.setdefault(obj.get("class", ""), []).append(obj)
        for obj in by_class.get("network", []):
            self.refs[obj["id"]] = self._network(obj["snapshot"])
        for obj in by_class.get("VDI", []):
            self.refs[obj["id"]] = self._vdi(obj["snapshot"])
        vms = by_class.get("VM", [])
        if len(vms) != 1:
            raise XapiError("IMPORT_ERROR", f"expected one VM in the archive, found {len(vms)}")
        vm = self.refs[vms[0]["id"]] = self._vm(vms[0]["snapshot"])
        for obj in by_class.get("VBD", []):
            self._vbd(vm, obj["snapshot"])
        for obj in by_class.get("VIF", []):
            self._vif(vm, obj["snapshot"])
        refresh_vm(self.db, vm)
        return vm

    def _new(self, cls: str, **fields) -> str:
        ref = self.db.create(cls, **fields)
        self.created.append((cls, ref))
        return ref

    def _network(self, rec: dict) -> str:
        for key in ("uuid", "name_label"):
            found = self.db.find("network", **{key: rec.get(key, "")})
            if found and rec.get(key):
                return found[0]
        return self._new(
            "network", name_label=rec.get("name_label", ""), MTU=int(rec.get("MTU", 1500) or 1500)
        )

    def _vdi(self, rec: dict) -> str:
        ref = storage.vdi_create(
            self.ctx,
            {"SR": self.sr, "virtual_size": int(rec.get("virtual_size", 0)), "type": rec.get("type", "user"),
             "name_label": rec.get("name_label", ""), "name_description": rec.get("name_description", ""),
             "sharable": bool(rec.get("sharable")), "read_only": False,
             "other_config": dict(rec.get("other_config") or {})},
        )  # fmt: skip
        self.created.append(("VDI", ref))
        return ref

    def _vm(self, rec: dict) -> str:
        info = self.db.schema.classes["VM"]
        fields = {k: v for k, v in rec.items() if k in info.fields and k not in _NOT_COPIED}
        fields = {
            k: (NULL_REF if isinstance(v, str) and v.startswith("Ref:") else v) for k, v in fields.items()
        }
        if self.restore and rec.get("uuid"):
            if self.db.find("VM", uuid=rec["uuid"]):
                raise XapiError("DUPLICATE_VM", rec["uuid"])
            fields["uuid"] = rec["uuid"]
        for name, value in list(fields.items()):
            kind = info.fields[name].type.kind
            if kind == "int":
                fields[name] = int(value)
            elif kind == "float":
                fields[name] = float(value)
            elif kind == "bool" and isinstance(value, str):
                fields[name] = value == "true"
            elif kind == "datetime":
                del fields[name]  # the new VM's own times
        fields.update(power_state=HALTED, domid=-1, memory_target=0, is_a_snapshot=False)
        ref = self._new("VM", **fields)
        ensure_metrics(self.db, ref)
        return ref

    def _vbd(self, vm: str, rec: dict) -> None:
        vdi = self.refs.get(rec.get("VDI", ""), NULL_REF)
        ref = self._new(
            "VBD", VM=vm, VDI=vdi, userdevice=rec.get("userdevice", "0"),
            bootable=rec.get("bootable") is True,
            mode=rec.get("mode", "RW"), type=rec.get("type", "Disk"), empty=storage.is_null(vdi),
            unpluggable=rec.get("unpluggable", True) is not False,
            other_config=dict(rec.get("other_config") or {}),
        )  # fmt: skip
        storage.refresh_vbd(self.db, ref)

    def _vif(self, vm: str, rec: dict) -> None:
        ref = self._new(
            "VIF", VM=vm, device=rec.get("device", "0"), network=self.refs[rec["network"]],
            MAC=rec.get("MAC", ""), MTU=int(rec.get("MTU", 1500) or 1500),
            MAC_autogenerated=rec.get("MAC_autogenerated") is True,
            other_config=dict(rec.get("other_config") or {}),
        )  # fmt: skip
        refresh_vif(self.db, ref)

    def chunk(self, name: str, data: bytes) -> None:
        disk_id, _, part = name.partition("/")
        if disk_id not in self.refs:
            raise XapiError("IMPORT_ERROR", f"{name}: no disk {disk_id} in ova.xml")
        if part.endswith(".checksum"):
            if self.last is None or self.last[0] != name[: -len(".checksum")]:
                raise XapiError("IMPORT_ERROR", f"{name}: checksum without its chunk")
            if hashlib.sha1(self.last[1]).hexdigest() != data.decode("ascii", "replace").strip():  # noqa: S324
                raise XapiError("IMPORT_ERROR", f"{name}: checksum mismatch")
            return
        chain = self.chains.get(disk_id)
        if chain is None:
            path = str(storage.disk_path(self.ctx.pool, self.refs[disk_id], self.ctx.world))
            chain = self.chains[disk_id] = vhd.open_chain(path)
        if any(data):
            chain.write(int(part) * CHUNK, data)
        self.last = (name, data)

    def close(self) -> None:
        for chain in self.chains.values():
            chain.close()
        self.chains.clear()
        for cls, ref in self.created:
            if cls == "VDI" and self.db.exists("VDI", ref):
                disk = storage.vdi_backend(self.ctx.pool, ref, self.ctx.world)
                storage.record_disk(self.db, self.sr, disk[0].info(disk[1]["location"]))

    def undo(self) -> None:
        self.close()
        for cls, ref in reversed(self.created):
            if not self.db.exists(cls, ref):
                continue
            if cls == "VDI":
                storage.vdi_destroy(self.ctx, ref)
            else:
                self.db.destroy(cls, ref)


@http_handler("PUT", "/import")
def import_vm(ctx, request) -> list[str]:
    db = ctx.db
    sr = request.query.get("sr_id", "")
    if not sr:
        pools = db.all("pool")
        sr = db.get("pool", pools[0])["default_SR"] if pools else NULL_REF
    elif not sr.startswith("OpaqueRef:"):
        sr = db.by_uuid("SR", sr)
    db.get("SR", sr)
    if "chunked" in (request.headers.get("Transfer-Encoding") or "").lower():
        body = _Chunks(request)
    elif request.content_length is None:
        raise XapiError("INVALID_VALUE", "Content-Length", "missing")
    else:
        body = _Bounded(request.rfile, request.content_length)
    importer = _Importer(ctx, sr, request.query.get("restore", "").lower() == "true")
    try:
        with tarfile.open(fileobj=body, mode="r|") as tar:
            vm = None
            for member in tar:
                handle = tar.extractfile(member) if member.isfile() else None
                data = handle.read() if handle is not None else b""
                if vm is None:
                    if member.name != "ova.xml":
                        raise XapiError(
                            "IMPORT_ERROR", f"the archive starts with {member.name!r}, not ova.xml"
                        )
                    with db.lock:
                        vm = importer.records(parse_ova(data)["objects"])
                elif member.isfile():
                    importer.chunk(member.name, data)
        if vm is None:
            raise XapiError("IMPORT_ERROR", "empty archive")
        importer.close()
    except (tarfile.TarError, XapiError, vhd.VHDError, OSError) as exc:
        importer.undo()
        error = exc if isinstance(exc, XapiError) else XapiError("IMPORT_ERROR", f"not a readable XVA: {exc}")
        _fail_after_partial_read(ctx, request, body, error)  # drain the rest: the connection stays sane
        raise error from None
    except BaseException:
        importer.undo()
        raise
    storage.refresh_sr(ctx.pool, sr, ctx.world)
    if ctx.task:  # finished before the client sees the response, as XAPI does
        tasks.succeed(db, ctx.task, [vm])
    request.respond(200, b"", headers={"task-id": ctx.task} if ctx.task else None)
    return [vm]
