"""VHD library: fixed, dynamic and differencing VHDs as XenServer's blktap writes them.

Public API (see doc/source/vhd.rst)::

    from xenapi_driver import vhd
    vhd.create_dynamic(path, size); vhd.snapshot(child, parent); vhd.info(path)
    with vhd.open_chain(path) as chain: chain.read(0, 4096)
"""

from .chain import Chain, open_chain
from .errors import (
    VHDChainError,
    VHDError,
    VHDFormatError,
    VHDMissingParentError,
    VHDNotFoundError,
)
from .format import BLOCK_SIZE, MAX_VIRTUAL_SIZE
from .ops import (
    VHDInfo,
    check,
    coalesce,
    create_dynamic,
    create_fixed,
    info,
    repair,
    reparent,
    resize,
    set_hidden,
    set_uuid,
    snapshot,
)
from .stream import export_raw, export_vhd_stream, import_raw, import_vhd_stream, iter_vhd_stream

__all__ = [
    "BLOCK_SIZE",
    "MAX_VIRTUAL_SIZE",
    "Chain",
    "VHDChainError",
    "VHDError",
    "VHDFormatError",
    "VHDInfo",
    "VHDMissingParentError",
    "VHDNotFoundError",
    "check",
    "coalesce",
    "create_dynamic",
    "create_fixed",
    "export_raw",
    "export_vhd_stream",
    "import_raw",
    "import_vhd_stream",
    "info",
    "iter_vhd_stream",
    "open_chain",
    "repair",
    "reparent",
    "resize",
    "set_hidden",
    "set_uuid",
    "snapshot",
]
