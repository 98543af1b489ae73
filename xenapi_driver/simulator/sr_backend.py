"""Storage-repository backends of the XAPI simulator, as XenServer's storage manager lays them out.

These classes know nothing about XAPI's database: they operate on a directory and describe what
they find, so they can be tested alone and reused by every handler that touches disks.

* :class:`FileSR` is XenServer's file SR (EXT/NFS): every VDI is a real VHD ``<vdi-uuid>.vhd``;
  snapshot/clone turn the current file into a hidden read-only "base copy" and put new leaves on
  top; destroy hides a leaf and the garbage collector (run by :meth:`FileSR.scan`) deletes
  childless hidden nodes and coalesces a hidden parent with its only child.
* :class:`IsoSR` is an ISO library: one read-only VDI per ``*.iso`` file.
* :class:`LunSR` is a raw iSCSI SR whose LUNs are files in a target directory.

Every backend's :meth:`scan` returns ``{location: DiskInfo}``: the simulator's ``SR.scan``
reconciles the database against it by ``location`` exactly as XAPI does.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path

from xenapi_driver import vhd

#: SM's ``vhdutil.MAX_CHAIN_SIZE``: snapshot/clone refuse once a leaf's chain is this deep.
MAX_CHAIN_DEPTH = 30
#: Largest VHD XenServer's file SR creates (2040 GiB).
MAX_VHD_SIZE = 2040 * 1024**3
VHD_BLOCK = 2 * 1024**2


class SRBackendError(Exception):
    """A storage-manager failure; ``code``/``params`` become the XAPI error on the wire.

    XAPI reports SM failures as ``SR_BACKEND_FAILURE_<n> [status, stdout, stderr]``; the
    simulator's handlers turn this exception into exactly that Failure.
    """

    def __init__(self, code: str, *params: str) -> None:
        super().__init__(code, *params)
        self.code = code
        self.params = [str(p) for p in params]

    @classmethod
    def sm(cls, number: int, message: str) -> SRBackendError:
        """Build the ``SR_BACKEND_FAILURE_<number>`` error SM raises, with its three parameters."""
        return cls(f"SR_BACKEND_FAILURE_{number}", "", message, "")


@dataclass
class DiskInfo:
    """What a backend knows about one disk on the SR, keyed by its ``location``."""

    location: str
    uuid: str
    virtual_size: int
    physical_utilisation: int
    hidden: bool = False
    read_only: bool = False
    parent: str | None = None  # location (= VDI uuid) of the parent VHD on a file SR
    vdi_type: str = "user"
    sm_config: dict[str, str] = field(default_factory=dict)

    @property
    def managed(self) -> bool:
        """Hidden base copies are ``managed=false`` in XAPI: users never see them as disks."""
        return not self.hidden


def round_vhd_size(size: int) -> int:
    """Round a requested size up to a whole VHD block, as ``vhdutil.validate_and_round_vhd_size``."""
    if size <= 0:
        return VHD_BLOCK
    return (size + VHD_BLOCK - 1) // VHD_BLOCK * VHD_BLOCK


class FileSR:
    """XenServer's file SR on a directory (``/var/run/sr-mount/<sr-uuid>``).

    ``physical_size`` is the capacity the SR reports; requests larger than the free space raise
    ``SR_FULL [requested, max]``.  All operations serialise on :attr:`lock` (the SR lock SM takes).
    """

    sr_type = "ext"

    def __init__(self, root: Path | str, physical_size: int = 512 * 1024**3) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.physical_size = physical_size
        self.lock = threading.RLock()

    # -- paths and inspection -------------------------------------------------------------
    def path_of(self, vdi_uuid: str) -> Path:
        """Where the VHD of ``vdi_uuid`` lives; the VDI's ``location`` is its UUID."""
        _check_uuid(vdi_uuid)
        return self.root / f"{vdi_uuid}.vhd"

    def exists(self, vdi_uuid: str) -> bool:
        return self.path_of(vdi_uuid).exists()

    def info(self, vdi_uuid: str) -> DiskInfo:
        """Describe one VHD; ``SR_BACKEND_FAILURE_46`` ("VDI not available") when it is gone."""
        path = self.path_of(vdi_uuid)
        if not path.exists():
            raise SRBackendError.sm(46, f"The VDI is not available [opterr={vdi_uuid}.vhd not found]")
        return self._describe(path)

    def _describe(self, path: Path) -> DiskInfo:
        meta = vhd.info(str(path))
        parent = Path(meta.parent_path).stem if meta.parent_path else None
        sm_config = {"vdi_type": "vhd"}
        if parent:
            sm_config["vhd-parent"] = parent
        return DiskInfo(
            location=path.stem,
            uuid=path.stem,
            virtual_size=meta.virtual_size,
            physical_utilisation=path.stat().st_size,
            hidden=bool(meta.hidden),
            read_only=bool(meta.hidden),
            parent=parent,
            sm_config=sm_config,
        )

    def _all(self) -> dict[str, DiskInfo]:
        found: dict[str, DiskInfo] = {}
        for path in sorted(self.root.glob("*.vhd")):
            if not _is_uuid(path.stem):
                continue
            try:
                found[path.stem] = self._describe(path)
            except vhd.VHDError:
                continue  # SM skips VHDs it cannot read; they never become VDIs
        return found

    def children(self, vdi_uuid: str, nodes: dict[str, DiskInfo] | None = None) -> list[str]:
        nodes = self._all() if nodes is None else nodes
        return sorted(n.uuid for n in nodes.values() if n.parent == vdi_uuid)

    def depth(self, vdi_uuid: str) -> int:
        """Chain depth counting the VHD itself (``vhd-util query -d``)."""
        return int(vhd.info(str(self.path_of(vdi_uuid))).depth)

    def physical_utilisation(self) -> int:
        return sum(p.stat().st_size for p in self.root.glob("*.vhd"))

    def virtual_allocation(self) -> int:
        """Sum of virtual sizes of the visible VDIs (hidden base copies are not counted)."""
        return sum(n.virtual_size for n in self._all().values() if not n.hidden)

    def _check_space(self, requested: int) -> None:
        free = max(self.physical_size - self.physical_utilisation(), 0)
        if requested > free:
            raise SRBackendError("SR_FULL", str(requested), str(free))

    # -- operations -----------------------------------------------------------------------
    def create(self, virtual_size: int, vdi_uuid: str | None = None) -> DiskInfo:
        """``VDI.create``: a new empty dynamic VHD (size rounded up to 2 MiB)."""
        size = round_vhd_size(int(virtual_size))
        if size > MAX_VHD_SIZE:
            raise SRBackendError.sm(79, f"VDI Invalid size [opterr=max size is {MAX_VHD_SIZE}]")
        with self.lock:
            self._check_space(size)
            vdi_uuid = vdi_uuid or str(uuidlib.uuid4())
            path = self.path_of(vdi_uuid)
            if path.exists():
                raise SRBackendError.sm(40, f"The VDI already exists [opterr={vdi_uuid}]")
            vhd.create_dynamic(str(path), size)
            return self._describe(path)

    def snapshot(self, vdi_uuid: str) -> tuple[DiskInfo, DiskInfo, DiskInfo]:
        """``VDI.snapshot``/``VDI.clone``: returns ``(base, original_leaf, new_leaf)``.

        The current file becomes a hidden read-only base copy under a new UUID; the original VDI
        UUID gets a fresh empty leaf on top of it (so the user's disk keeps its identity) and the
        snapshot/clone is a second leaf with a new UUID.
        """
        with self.lock:
            path = self.path_of(vdi_uuid)
            if self.info(vdi_uuid).hidden:
                raise SRBackendError.sm(46, f"The VDI is not available [opterr={vdi_uuid} is hidden]")
            depth = self.depth(vdi_uuid)
            if depth >= MAX_CHAIN_DEPTH:
                raise SRBackendError.sm(
                    109, f"The snapshot chain is too long [opterr=chain depth {depth} >= {MAX_CHAIN_DEPTH}]"
                )
            base_uuid = str(uuidlib.uuid4())
            new_uuid = str(uuidlib.uuid4())
            base_path = self.path_of(base_uuid)
            os.rename(path, base_path)
            try:
                vhd.set_hidden(str(base_path), True)
                vhd.snapshot(str(path), str(base_path))
            except Exception:
                if not path.exists():
                    vhd.set_hidden(str(base_path), False)
                    os.rename(base_path, path)
                raise
            vhd.snapshot(str(self.path_of(new_uuid)), str(base_path))
            return self._describe(base_path), self._describe(path), self._describe(self.path_of(new_uuid))

    clone = snapshot

    def destroy(self, vdi_uuid: str) -> None:
        """``VDI.destroy``: hide the leaf; the GC of the next scan deletes what nobody needs."""
        with self.lock:
            path = self.path_of(vdi_uuid)
            if not path.exists():
                return
            vhd.set_hidden(str(path), True)

    def resize(self, vdi_uuid: str, new_size: int) -> DiskInfo:
        """``VDI.resize``: grow only, like SM (shrinking is ``SR_BACKEND_FAILURE_79``)."""
        with self.lock:
            current = self.info(vdi_uuid)
            size = round_vhd_size(int(new_size))
            if size < current.virtual_size:
                raise SRBackendError.sm(79, "VDI Invalid size [opterr=shrinking not allowed]")
            if size > MAX_VHD_SIZE:
                raise SRBackendError.sm(79, f"VDI Invalid size [opterr=max size is {MAX_VHD_SIZE}]")
            if size == current.virtual_size:
                return current
            self._check_space(size - current.virtual_size)
            vhd.resize(str(self.path_of(vdi_uuid)), size)
            return self._describe(self.path_of(vdi_uuid))

    def copy_to(
        self,
        vdi_uuid: str,
        dest: FileSR,
        *,
        base_uuid: str | None = None,
        into_uuid: str | None = None,
        new_uuid: str | None = None,
    ) -> DiskInfo:
        """``VDI.copy``: flatten ``vdi_uuid``'s chain into a new VHD on ``dest`` (or ``into_uuid``).

        With ``base_uuid`` only the blocks that differ from that chain member are written, which
        is how XAPI copies deltas into an existing disk.
        """
        src_path = self.path_of(vdi_uuid)
        src = self.info(vdi_uuid)
        base_path = str(self.path_of(base_uuid)) if base_uuid else None
        with tempfile.TemporaryFile(dir=dest.root) as stream:
            with self.lock:
                vhd.export_vhd_stream(str(src_path), stream, base_path)
            stream.seek(0)
            with dest.lock:
                if into_uuid:
                    target = dest.info(into_uuid)
                    if target.virtual_size < src.virtual_size:
                        vhd.resize(str(dest.path_of(into_uuid)), src.virtual_size)
                    vhd.import_vhd_stream(stream, str(dest.path_of(into_uuid)))
                    return dest.info(into_uuid)
                created = dest.create(src.virtual_size, new_uuid)
                vhd.import_vhd_stream(stream, str(dest.path_of(created.uuid)))
                return dest.info(created.uuid)

    def delta_base(self, vdi_uuid: str, other_uuid: str) -> str | None:
        """A member of ``vdi_uuid``'s chain whose content is exactly ``other_uuid``'s, or None.

        That is ``other_uuid`` itself when it is an ancestor, or its parent when ``other_uuid``
        is an unwritten leaf on a base ``vdi_uuid`` shares (a snapshot, as ``snapshot`` makes
        them).  Storage XenMotion then copies only the blocks above that member.
        """
        with self.lock:
            ancestors = []
            current = self.info(vdi_uuid).parent
            while current:
                ancestors.append(current)
                current = self.info(current).parent
            if other_uuid in ancestors:
                return other_uuid
            parent = self.info(other_uuid).parent
            if parent in ancestors:
                with vhd.open_chain(str(self.path_of(other_uuid))) as chain:
                    if not chain.layers[0].allocated_blocks():
                        return parent
            return None

    def adopt(self, source: Path | str, vdi_uuid: str | None = None) -> DiskInfo:
        """Move an existing standalone VHD file into the SR under ``vdi_uuid`` (fresh by default)."""
        with self.lock:
            vdi_uuid = vdi_uuid or str(uuidlib.uuid4())
            path = self.path_of(vdi_uuid)
            os.replace(source, path)
            return self._describe(path)

    # -- garbage collection and scan ------------------------------------------------------
    def gc(self) -> list[str]:
        """SM's cleanup pass; returns the UUIDs whose files disappeared.

        Repeats until stable: deletes hidden VHDs without children; coalesces a hidden parent
        with exactly one child.  An interior (hidden) child is merged into its parent and its
        children re-linked; a visible leaf is merged and the parent file takes the leaf's name,
        so the user's VDI keeps its UUID while the chain gets one shorter.
        """
        removed: list[str] = []
        with self.lock:
            changed = True
            while changed:
                changed = False
                nodes = self._all()
                kids: dict[str, list[str]] = {}
                for node in nodes.values():
                    if node.parent:
                        kids.setdefault(node.parent, []).append(node.uuid)
                for node in nodes.values():
                    if node.hidden and not kids.get(node.uuid):
                        self.path_of(node.uuid).unlink()
                        removed.append(node.uuid)
                        changed = True
                if changed:
                    continue
                for node in nodes.values():
                    only = kids.get(node.uuid, [])
                    if node.hidden and len(only) == 1:
                        removed.append(self._coalesce(node, nodes[only[0]], kids))
                        changed = True
                        break
        return removed

    def _coalesce(self, parent: DiskInfo, child: DiskInfo, kids: dict[str, list[str]]) -> str:
        parent_path, child_path = self.path_of(parent.uuid), self.path_of(child.uuid)
        if child.virtual_size > parent.virtual_size:
            vhd.resize(str(parent_path), child.virtual_size)
        vhd.coalesce(str(child_path))
        if child.hidden:
            for grandchild in kids.get(child.uuid, []):
                vhd.reparent(str(self.path_of(grandchild)), str(parent_path))
            child_path.unlink()
            return child.uuid
        # Leaf coalesce: the merged parent becomes the user's VDI under the leaf's UUID.
        child_path.unlink()
        vhd.set_hidden(str(parent_path), False)
        os.rename(parent_path, child_path)
        return parent.uuid

    def scan(self) -> dict[str, DiskInfo]:
        """``SR.scan``: run the GC, then describe every VHD on disk (keyed by location)."""
        with self.lock:
            self.gc()
            return self._all()


class IsoSR:
    """An ISO library SR: each ``*.iso`` file in the directory is a read-only VDI."""

    sr_type = "iso"

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.lock = threading.RLock()

    def path_of(self, location: str) -> Path:
        return self.root / location

    def scan(self) -> dict[str, DiskInfo]:
        found: dict[str, DiskInfo] = {}
        if not self.root.is_dir():
            return found
        for path in sorted(self.root.iterdir()):
            if path.suffix.lower() == ".iso" and path.is_file():
                size = path.stat().st_size
                found[path.name] = DiskInfo(
                    location=path.name,
                    uuid=str(uuidlib.uuid4()),
                    virtual_size=size,
                    physical_utilisation=size,
                    read_only=True,
                )
        return found

    def physical_utilisation(self) -> int:
        return sum(d.physical_utilisation for d in self.scan().values())


def lun_scsi_id(target_iqn: str, lun: int) -> str:
    """The SCSI id a simulated target reports for a LUN (stable, ``3`` + NAA-like hex)."""
    return "36" + hashlib.sha1(f"{target_iqn}:{lun}".encode()).hexdigest()[:31]


class LunSR:
    """A raw iSCSI SR (``type='iscsi'``/``'lvmoiscsi'``) whose LUNs are files.

    The simulated target is a directory ``<iscsi_root>/<targetIQN>/`` holding ``lun<N>`` raw
    files.  With a ``SCSIid`` only the matching LUN is visible, as when XenServer attaches one LUN.
    Each LUN is one VDI: ``location`` is its SCSI id, ``sm_config`` carries ``LUNid`` and ``SCSIid``.
    """

    sr_type = "iscsi"

    def __init__(self, iscsi_root: Path | str, target_iqn: str, scsi_id: str | None = None) -> None:
        if not target_iqn or "/" in target_iqn or target_iqn.startswith("."):
            raise SRBackendError.sm(
                68, f"ISCSI login failed - check access settings [opterr=bad targetIQN {target_iqn!r}]"
            )
        self.target_iqn = target_iqn
        self.root = Path(iscsi_root) / target_iqn
        self.scsi_id = scsi_id or None
        self.lock = threading.RLock()

    def check_attachable(self) -> None:
        """PBD.plug fails like SM's ISCSISR when the target or the requested LUN is absent."""
        if not self.root.is_dir():
            raise SRBackendError.sm(
                68, f"ISCSI login failed - check access settings [opterr=no target {self.target_iqn}]"
            )
        if self.scsi_id and self.scsi_id not in self.scan():
            raise SRBackendError.sm(
                107, f"The SCSIid parameter is missing or incorrect [opterr={self.scsi_id}]"
            )

    def luns(self) -> dict[int, Path]:
        found: dict[int, Path] = {}
        if self.root.is_dir():
            for path in self.root.iterdir():
                if path.name.startswith("lun") and path.name[3:].isdigit() and path.is_file():
                    found[int(path.name[3:])] = path
        return found

    def path_of(self, location: str) -> Path:
        for lun, path in self.luns().items():
            if lun_scsi_id(self.target_iqn, lun) == location:
                return path
        raise SRBackendError.sm(46, f"The VDI is not available [opterr=no LUN with SCSIid {location}]")

    def scan(self) -> dict[str, DiskInfo]:
        found: dict[str, DiskInfo] = {}
        for lun, path in sorted(self.luns().items()):
            scsi = lun_scsi_id(self.target_iqn, lun)
            if self.scsi_id and scsi != self.scsi_id:
                continue
            size = path.stat().st_size
            found[scsi] = DiskInfo(
                location=scsi,
                uuid=str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, f"iscsi:{self.target_iqn}:{lun}")),
                virtual_size=size,
                physical_utilisation=size,
                sm_config={"LUNid": str(lun), "SCSIid": scsi},
            )
        return found

    def physical_utilisation(self) -> int:
        return sum(d.physical_utilisation for d in self.scan().values())


def create_lun(iscsi_root: Path | str, target_iqn: str, lun: int, size: int) -> str:
    """Create a LUN file on a simulated iSCSI target and return its SCSI id (for tests and demos)."""
    if not target_iqn or "/" in target_iqn or target_iqn.startswith("."):
        raise ValueError(f"bad target IQN {target_iqn!r} (e.g. 'iqn.2010-10.org.openstack:volume-1')")
    if lun < 0 or size < 0:
        raise ValueError(f"LUN number and size must not be negative (got lun={lun}, size={size})")
    root = Path(iscsi_root) / target_iqn
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"lun{lun}", "wb") as handle:
        handle.truncate(size)
    return lun_scsi_id(target_iqn, lun)


def _is_uuid(text: str) -> bool:
    try:
        return str(uuidlib.UUID(text)) == text.lower()
    except ValueError:
        return False


def _check_uuid(text: str) -> None:
    if not _is_uuid(text):
        raise SRBackendError("UUID_INVALID", "VDI", text)
