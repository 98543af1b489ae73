"""The image layer: boot disks from Glance images and instance snapshots to Glance.

``XenAPIImageSource`` is what :class:`~xenapi_driver.vmops.VMOps` uses as its
image source; see ``doc/source/images.rst``.
"""

from xenapi_driver.image.cache import ImageCache
from xenapi_driver.image.formats import Kind, kind_of
from xenapi_driver.image.glance import ImageAPI
from xenapi_driver.image.handlers import DirectVHDHandler, LocalDevHandler, StreamHandler, handler_for
from xenapi_driver.image.source import XenAPIImageSource

__all__ = [
    "DirectVHDHandler",
    "ImageAPI",
    "ImageCache",
    "Kind",
    "LocalDevHandler",
    "StreamHandler",
    "XenAPIImageSource",
    "handler_for",
    "kind_of",
]
