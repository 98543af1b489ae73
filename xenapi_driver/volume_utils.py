"""Cinder connection info as XenServer storage: parsing, naming and device numbers.

Pure functions (no XAPI calls), so the rules that decide which SR a volume
lives in and which device it gets are stated once and tested on their own.
:mod:`xenapi_driver.volumeops` does the XAPI work with them.

* A volume reaches XenServer as a raw iSCSI SR (``type="iscsi"``, XenServer's
  storage manager's one-VDI-per-LUN driver) introduced with the target's
  ``device_config`` (``target``, ``port``, ``targetIQN`` and, with CHAP,
  ``chapuser``/``chappassword``). Each LUN is one VDI whose
  ``sm_config['LUNid']`` is the LUN number.
* The SR's UUID is derived from the target (portal and IQN): attaching a
  second LUN of the same target reuses the SR, and a restarted nova-compute
  finds the SRs it introduced. The SR is forgotten once no VBD uses any of
  its VDIs.
* CHAP secrets stay in ``device_config`` only: :class:`IscsiTarget` hides
  them from ``repr`` and nothing here logs or formats them into errors.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from nova import exception as nova_exception
from xenapi_driver import conf as xconf

#: Namespace of the UUIDs of SRs this driver introduces for volumes.
SR_NAMESPACE = uuid.UUID("6e8d2a5c-3f1b-5b7e-9a40-6c0b7f0f2d11")

#: ``other_config`` keys marking what this driver created for a volume.
VOLUME_SR_KEY = "nova_volume_sr"  # on the SR: "true"
VBD_VOLUME_KEY = "osvol"  # on the VBD: "True" (the old XenServer driver's marker)
VBD_VOLUME_ID_KEY = "nova_volume_id"  # on the VBD: Cinder's volume id
VBD_MOUNTPOINT_KEY = "nova_mountpoint"  # on the VBD: Nova's device name

SUPPORTED_TYPES = ("iscsi",)

#: Highest userdevice a VM may use (XenServer allows 0-15 for HVM guests).
MAX_USERDEVICE = 15


class UnsupportedVolumeType(nova_exception.VolumeDriverNotSupported, NotImplementedError):
    """Cinder gave a volume type XenServer cannot attach.

    Also a NotImplementedError: the driver implements volumes, but not of this
    type (Nova's generic driver tests use the type ``fake``).
    """

    msg_fmt = (
        "Volumes of type %(volume_driver)s cannot be attached by the XenServer driver: "
        "%(reason)s. Use a Cinder backend that exports iSCSI."
    )


class VolumeConnectionError(nova_exception.StorageError):
    """Cinder's connection info lacks what XenServer needs (the text says what)."""


@dataclass(frozen=True)
class IscsiTarget:
    """One iSCSI LUN as Cinder describes it (``connection_info['data']``)."""

    volume_id: str
    host: str
    port: str
    iqn: str
    lun: int | None
    chap_user: str | None = None
    chap_password: str | None = field(default=None, repr=False)
    read_only: bool = False

    @property
    def portal(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def sr_uuid(self) -> str:
        return sr_uuid_for(self.host, self.port, self.iqn)

    @property
    def sr_label(self) -> str:
        return f"Cinder iSCSI target {self.iqn}"

    def device_config(self) -> dict[str, str]:
        """``device_config`` of the SR's PBD, as XenServer's iSCSI SR expects it.

        Holds the CHAP password: never log it.
        """
        config = {"target": self.host, "port": self.port, "targetIQN": self.iqn}
        if self.chap_user:
            config["chapuser"] = self.chap_user
            config["chappassword"] = self.chap_password or ""
        return config


def sr_uuid_for(host: str, port: str, iqn: str) -> str:
    """The SR UUID for a target (stable across attaches and nova-compute restarts)."""
    return str(uuid.uuid5(SR_NAMESPACE, f"iscsi:{host.lower()}:{port}/{iqn}"))


def split_portal(portal: str | None) -> tuple[str | None, str | None]:
    """``"host:port"`` / ``"[v6addr]:port"`` / ``"host"`` -> (host, port)."""
    if not portal:
        return None, None
    portal = portal.strip()
    match = re.match(r"^\[([^\]]+)\](?::(\d+))?$", portal)
    if match:
        return match.group(1), match.group(2)
    if portal.count(":") == 1:
        host, _, port = portal.partition(":")
        return host or None, port or None
    return portal, None  # a bare host name or an unbracketed IPv6 address


def _first(data: dict[str, Any], single: str, plural: str) -> Any:
    value = data.get(single)
    if value in (None, "") and data.get(plural):
        value = list(data[plural])[0]
    return value


def volume_type(connection_info: dict[str, Any]) -> str:
    return str((connection_info or {}).get("driver_volume_type") or "").lower()


def parse_connection_info(connection_info: dict[str, Any]) -> IscsiTarget:
    """The iSCSI target of Cinder's ``connection_info``, or a clear error.

    Accepts the single-path keys (``target_portal``, ``target_iqn``,
    ``target_lun``) and, when only those are given, the first of the
    multipath lists (``target_portals``...). ``[xenserver] target_host`` /
    ``target_port`` fill a portal that lacks them.
    """
    kind = volume_type(connection_info)
    if kind == "nfs":
        raise UnsupportedVolumeType(
            volume_driver="nfs",
            reason="XenServer's NFS SRs hold VHD files named by VDI UUID in a per-SR directory, "
            "not Cinder's volume files",
        )
    if kind not in SUPPORTED_TYPES:
        raise UnsupportedVolumeType(volume_driver=kind or "(none)", reason="only iSCSI volumes are supported")
    data = dict(connection_info.get("data") or {})
    volume_id = str(data.get("volume_id") or connection_info.get("serial") or "")
    portal = _first(data, "target_portal", "target_portals")
    host, port = split_portal(portal)
    host = host or xconf.CONF.xenserver.target_host
    port = port or xconf.CONF.xenserver.target_port or "3260"
    iqn = _first(data, "target_iqn", "target_iqns")
    lun = _first(data, "target_lun", "target_luns")
    missing = [name for name, value in (("target_portal", host), ("target_iqn", iqn)) if not value]
    if missing:
        raise VolumeConnectionError(
            reason=f"Cinder's connection info for volume {volume_id or '?'} lacks "
            f"{' and '.join(missing)} (set [xenserver] target_host if the backend omits the portal)"
        )
    if lun not in (None, ""):
        try:
            lun = int(lun)
        except (TypeError, ValueError):
            raise VolumeConnectionError(
                reason=f"volume {volume_id or '?'}: target_lun {lun!r} is not a number"
            ) from None
    else:
        lun = None
    chap_user = chap_password = None
    if str(data.get("auth_method") or "").upper() == "CHAP":
        chap_user = data.get("auth_username")
        chap_password = data.get("auth_password")
        if not chap_user or chap_password is None:
            raise VolumeConnectionError(
                reason=f"volume {volume_id or '?'} uses CHAP but its connection info lacks "
                "auth_username or auth_password"
            )
    return IscsiTarget(
        volume_id=volume_id,
        host=str(host),
        port=str(port),
        iqn=str(iqn),
        lun=lun,
        chap_user=str(chap_user) if chap_user else None,
        chap_password=str(chap_password) if chap_password is not None else None,
        read_only=str(data.get("access_mode") or "rw").lower() == "ro",
    )


_NAME_RE = re.compile(r"^(?:/dev/)?(?:x?v|s|h)d([a-z]+)$")


def mountpoint_to_userdevice(mountpoint: str | None) -> str | None:
    """Nova's device name (``/dev/xvdb``, ``vdc``, ``sdb``, ``3``) -> XAPI userdevice ("1", ...).

    None when Nova gave no device name (then the first free device is used).
    """
    if mountpoint in (None, ""):
        return None
    text = str(mountpoint).strip()
    if text.isdigit():
        number = int(text)
    else:
        match = _NAME_RE.match(text)
        if not match:
            raise VolumeConnectionError(
                reason=f"device name {mountpoint!r} is not one XenServer can use "
                "(expected /dev/xvdX, /dev/vdX, /dev/sdX or a device number)"
            )
        number = 0
        for char in match.group(1):
            number = number * 26 + (ord(char) - ord("a") + 1)
        number -= 1
    if number > MAX_USERDEVICE:
        raise VolumeConnectionError(
            reason=f"device {mountpoint!r} is beyond the {MAX_USERDEVICE + 1} disks a XenServer VM can have"
        )
    return str(number)
