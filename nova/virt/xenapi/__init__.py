"""Nova's entry point for ``compute_driver = xenapi.XenAPIDriver``.

Nova imports ``nova.virt.<compute_driver>``; this one file is all we place
in Nova's tree, so installing or removing xenapi-driver never touches
Nova's own files.
"""

from xenapi_driver.driver import XenAPIDriver

__all__ = ["XenAPIDriver"]
