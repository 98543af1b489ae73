"""``XenAPIImageSource``: the image layer behind :class:`~xenapi_driver.vmops.VMOps`.

VMOps asks it for an instance's root disk (``root_vdi``, the ``ImageSource``
protocol); for ISO images also for the CD (``cdrom_vdi``), and for AMI-style
images for the kernel and ramdisk files in dom0 (``kernel_ramdisk``). The
driver delegates ``snapshot``, ``manage_image_cache`` and ``cache_image`` here.

Which handler moves bytes (``[xenserver] image_handler``) and whether images
are cached (``cache_images``) is decided here, so VMOps never sees either.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Callable
from typing import Any

import nova.conf

from nova import exception as nova_exception
from xenapi_driver import conf as xconf
from xenapi_driver import exception as xexc
from xenapi_driver.image import errors, formats, handlers, sr
from xenapi_driver.image.cache import ImageCache, cache_label
from xenapi_driver.image.formats import Kind
from xenapi_driver.image.glance import ImageAPI
from xenapi_driver.image.snapshot import Snapshotter

LOG = logging.getLogger(__name__)
CONF = nova.conf.CONF
GiB = 1024**3


def _image_id(image_meta: Any) -> str:
    if isinstance(image_meta, dict):
        return str(image_meta["id"])
    return str(image_meta.id)


def _field(obj: Any, name: str) -> Any:
    is_set = getattr(obj, "obj_attr_is_set", None)
    if is_set is not None:
        return getattr(obj, name) if is_set(name) else None
    return getattr(obj, name, None)


class XenAPIImageSource:
    """Boot disks from Glance images, and instance snapshots back to Glance.

    ``sr_finder`` returns the SR holding instance disks (the driver passes
    ``hostops.instance_sr``); it is used where Nova gives no SR
    (``cache_image``, ``manage_image_cache``).
    """

    def __init__(
        self,
        session: Any,
        *,
        image_api: Any = None,
        handler: str | None = None,
        sr_finder: Callable[[], str | None] | None = None,
    ) -> None:
        self.session = session
        self.image_api = image_api if isinstance(image_api, ImageAPI) else ImageAPI(image_api)
        self._handler_name = handler
        self.cache = ImageCache(session)
        self._sr_finder = sr_finder

    @property
    def handler(self) -> Any:
        """The handler named by ``[xenserver] image_handler`` now (options may change at runtime)."""
        return handlers.handler_for(self.session, self.image_api, self._handler_name)

    # -- boot disks -------------------------------------------------------------------------
    def _meta(self, context: Any, image_id: str) -> dict[str, Any]:
        try:
            meta = self.image_api.get(context, image_id)
        except nova_exception.NovaException:
            raise
        except Exception as exc:  # noqa: BLE001 - Glance client errors are many; say which image
            raise nova_exception.GlanceConnectionFailed(
                server="glance", reason=f"image {image_id}: {exc}"
            ) from exc
        meta.setdefault("id", image_id)
        return meta

    def root_vdi(self, context: Any, instance: Any, image_meta: Any, sr_ref: str) -> str:
        """The instance's root disk on ``sr_ref`` (``ImageSource`` protocol).

        For an ISO image this is a blank disk of the flavor's ``root_gb`` (at
        least 1 GiB); the ISO itself comes from :meth:`cdrom_vdi`.
        """
        image_id = _image_id(image_meta)
        meta = self._meta(context, image_id)
        kind = formats.kind_of(meta)
        name = f"{instance.name} root"
        if kind is Kind.ISO:
            flavor = _field(instance, "flavor")
            root_gb = int((flavor.root_gb if flavor is not None else _field(instance, "root_gb")) or 0)
            return sr.create_vdi(self.session, sr_ref, max(root_gb, 1) * GiB, name)
        if not kind.is_disk:
            raise errors.bad_image(image_id, f"a {kind.value} image cannot be an instance's disk")
        return self._from_image(context, image_id, meta, sr_ref, name)

    def cdrom_vdi(self, context: Any, instance: Any, image_meta: Any, sr_ref: str) -> str | None:
        """For an ISO image, a VDI holding it (attach as a read-only CD, bootable); else None."""
        image_id = _image_id(image_meta)
        meta = self._meta(context, image_id)
        if formats.kind_of(meta) is not Kind.ISO:
            return None
        return self._from_image(context, image_id, meta, sr_ref, f"{instance.name} cd")

    def _from_image(self, context: Any, image_id: str, meta: dict[str, Any], sr_ref: str, name: str) -> str:
        handler = self.handler
        if not self.cache.wanted(meta):
            return handler.download(context, image_id, meta, sr_ref, name)
        with self.cache.lock(sr_ref, image_id):
            entry = self.cache.lookup(sr_ref, image_id)
            if entry is None:
                LOG.info(
                    "Image %s is not cached in SR %s; fetching it with %s", image_id, sr_ref, handler.name
                )
                vdi = handler.download(context, image_id, meta, sr_ref, cache_label(image_id))
                try:
                    entry = (vdi, self.cache.adopt(vdi, image_id))
                except Exception:
                    sr.discard(self.session, sr_ref, [vdi])
                    raise
            return self.cache.clone(sr_ref, image_id, entry, name)

    # -- AMI kernels and ramdisks -----------------------------------------------------------
    def kernel_ramdisk(
        self, context: Any, instance: Any, image_meta: Any, sr_ref: str
    ) -> tuple[str | None, str | None]:
        """dom0 paths (in ``/boot/guest``) of the instance's kernel and ramdisk, if it has them."""
        ids = (_field(instance, "kernel_id") or None, _field(instance, "ramdisk_id") or None)
        if not any(ids):
            return None, None
        if xconf.CONF.xenserver.independent_compute:
            raise nova_exception.NotSupportedWithOption(
                operation="AMI-style kernel/ramdisk images", option="[xenserver] independent_compute"
            )
        made: list[str] = []
        try:
            files = tuple(
                self._boot_file(context, image_id, sr_ref, made) if image_id else None for image_id in ids
            )
        except Exception:
            self.remove_kernel_ramdisk(*[f for f in made if f])
            raise
        return files[0], files[1]

    def _boot_file(self, context: Any, image_id: str, sr_ref: str, made: list[str]) -> str:
        meta = self._meta(context, image_id)
        kind = formats.kind_of(meta)
        if kind not in (Kind.KERNEL, Kind.RAMDISK, Kind.RAW):
            raise errors.bad_image(image_id, f"a kernel or ramdisk must be aki/ari/raw, not {kind.value}")
        size = int(meta.get("size") or 0)
        limit = xconf.CONF.xenserver.max_kernel_ramdisk_size
        if size > limit:
            raise errors.bad_image(
                image_id, f"{size} bytes exceed [xenserver] max_kernel_ramdisk_size ({limit} bytes)"
            )
        vdi = self.handler.download(context, image_id, meta, sr_ref, f"kernel/ramdisk {image_id}")
        try:
            uuid = self.session.call_xenapi("VDI.get_uuid", vdi)
            args = {
                "sr_path": sr.sr_path(self.session, sr_ref),
                "vdi_uuid": uuid,
                "size": str(size),
                "max_size": str(limit),
                "cached_image": image_id,
            }
            try:
                result = json.loads(sr.call_plugin_async(self.session, "kernel", "copy_vdi", args))
            except xexc.XenAPIError as exc:
                raise errors.translate(exc, image_id) from exc
        finally:
            sr.discard(self.session, sr_ref, [vdi])
        made.append(result["filename"])
        return result["filename"]

    def remove_kernel_ramdisk(self, kernel_file: str | None = None, ramdisk_file: str | None = None) -> None:
        args = {k: v for k, v in (("kernel_file", kernel_file), ("ramdisk_file", ramdisk_file)) if v}
        if args:
            with contextlib.suppress(xexc.XenAPIError):
                self.session.call_plugin("kernel", "remove_kernel_ramdisk", args)

    # -- snapshots --------------------------------------------------------------------------
    def snapshot(self, context: Any, instance: Any, image_id: str, update_task_state: Any) -> None:
        Snapshotter(self.session, self.handler).snapshot(context, instance, image_id, update_task_state)

    # -- Nova's image cache manager ---------------------------------------------------------
    def _sr(self) -> str | None:
        if self._sr_finder is not None:
            return self._sr_finder()
        pool = next(iter(self.session.call_xenapi("pool.get_all")), None)
        return self.session.call_xenapi("pool.get_default_SR", pool) if pool else None

    def cache_image(self, context: Any, image_id: str) -> bool:
        """Nova's pre-cache request: fetch ``image_id`` into the cache; False if it was there."""
        sr_ref = self._sr()
        if not sr_ref:
            return False
        with self.cache.lock(sr_ref, image_id):
            if self.cache.lookup(sr_ref, image_id) is not None:
                return False
            meta = self._meta(context, image_id)
            vdi = self.handler.download(context, image_id, meta, sr_ref, cache_label(image_id))
            try:
                self.cache.adopt(vdi, image_id)
            except Exception:
                sr.discard(self.session, sr_ref, [vdi])
                raise
        return True

    def manage_image_cache(self, context: Any, all_instances: Any) -> list[str]:
        """Remove cached images no instance uses once unused for the configured age."""
        used: set[str] = set()
        for instance in all_instances or []:
            for name in ("image_ref", "kernel_id", "ramdisk_id"):
                value = _field(instance, name)
                if value:
                    used.add(str(value))
        if CONF.image_cache.remove_unused_base_images:
            max_age = float(CONF.image_cache.remove_unused_original_minimum_age_seconds)
        else:
            max_age = math.inf
        sr_ref = self._sr()
        if not sr_ref:
            return []
        return self.cache.expire(sr_ref, used, max_age)
