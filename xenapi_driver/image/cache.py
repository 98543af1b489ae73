"""The image cache in the SR: one base VDI per image, cloned for each boot.

The first boot of a cached image downloads it into a VDI marked as the cache
entry (``other_config``: ``nova_image_cache`` = image id, ``nova_image_cache_used``
= last use, Unix seconds); each boot takes ``VDI.clone`` of it, a
copy-on-write child whose cost does not depend on the image's size. The
entry's name label is ``Glance image <id>``, so it is found with one
server-side query.

XenServer's file SRs refuse clones once a chain is 30 deep
(``SR_BACKEND_FAILURE_109``); each clone of a live instance adds a level under
the entry. When that happens the entry is replaced by a full copy
(``VDI.copy``, flattening it) and the old one retired: its instances keep
their parents, and the storage GC removes it once they are gone.

Unused entries older than ``[image_cache] remove_unused_original_minimum_age_seconds``
are removed by :meth:`ImageCache.expire`, which the driver's
``manage_image_cache`` calls from Nova's image cache manager.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import nova.conf

from xenapi_driver import conf as xconf
from xenapi_driver import exception as xexc
from xenapi_driver.image import formats, sr

LOG = logging.getLogger(__name__)
CONF = nova.conf.CONF

CACHE_KEY = "nova_image_cache"
USED_KEY = "nova_image_cache_used"
CHAIN_TOO_LONG = "SR_BACKEND_FAILURE_109"


def cache_label(image_id: str) -> str:
    return f"Glance image {image_id}"


class ImageCache:
    """Cached base VDIs per (SR, image)."""

    def __init__(self, session: Any, clock: Callable[[], float] = time.time) -> None:
        self.session = session
        self.clock = clock
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._locks_guard = threading.Lock()

    @staticmethod
    def wanted(meta: dict[str, Any]) -> bool:
        """Whether ``[xenserver] cache_images`` caches this image."""
        mode = xconf.CONF.xenserver.cache_images
        if mode == "all":
            return True
        if mode == "some":
            return formats.truthy(formats.properties(meta).get("cache_in_nova", False))
        return False

    def lock(self, sr_ref: str, image_id: str) -> threading.Lock:
        """Serialises first boots of one image on one SR: it is downloaded once."""
        with self._locks_guard:
            return self._locks.setdefault((sr_ref, image_id), threading.Lock())

    def lookup(self, sr_ref: str, image_id: str) -> tuple[str, dict[str, Any]] | None:
        """The cache entry of ``image_id`` on ``sr_ref``, if any (one XAPI call)."""
        expr = (
            f'field "name__label" = "{sr.quote(cache_label(image_id))}" and field "SR" = "{sr.quote(sr_ref)}"'
        )
        for ref, rec in self.session.get_all_records_where("VDI", expr).items():
            if (rec.get("other_config") or {}).get(CACHE_KEY) == image_id and rec.get("managed", True):
                return ref, rec
        return None

    def adopt(self, vdi_ref: str, image_id: str) -> dict[str, Any]:
        """Make a freshly downloaded VDI the cache entry of ``image_id``."""
        other = {CACHE_KEY: image_id, USED_KEY: str(int(self.clock()))}
        self.session.call_xenapi("VDI.set_name_label", vdi_ref, cache_label(image_id))
        self.session.call_xenapi("VDI.set_name_description", vdi_ref, "Nova image cache (do not attach)")
        self.session.call_xenapi("VDI.set_other_config", vdi_ref, other)
        return {"other_config": other}

    def clone(self, sr_ref: str, image_id: str, entry: tuple[str, dict[str, Any]], name: str) -> str:
        """A copy-on-write clone of the cache entry for one boot; refreshes the entry's last use."""
        ref, rec = entry
        try:
            clone = self.session.call_xenapi("VDI.clone", ref, {})
        except xexc.XenAPIError as exc:
            if exc.code != CHAIN_TOO_LONG:
                raise
            LOG.info(
                "Cached image %s reached XenServer's chain limit; replacing it with a full copy", image_id
            )
            ref, rec = self._replace(sr_ref, image_id, ref)
            clone = self.session.call_xenapi("VDI.clone", ref, {})
        try:
            self.session.call_xenapi("VDI.set_name_label", clone, name)
            self.session.call_xenapi("VDI.set_other_config", clone, {"nova_image_id": image_id})
            other = dict(rec.get("other_config") or {})
            other[USED_KEY] = str(int(self.clock()))
            self.session.call_xenapi("VDI.set_other_config", ref, other)
        except Exception:
            with contextlib.suppress(Exception):
                sr.destroy_vdi(self.session, clone)
            raise
        return clone

    def _replace(self, sr_ref: str, image_id: str, old: str) -> tuple[str, dict[str, Any]]:
        new = self.session.call_xenapi("VDI.copy", old, sr_ref)
        try:
            rec = self.adopt(new, image_id)
        except Exception:
            sr.destroy_vdi(self.session, new)
            raise
        self._retire(old)
        return new, rec

    def _retire(self, ref: str) -> None:
        """Stop using an entry: destroy hides it; its base copies live on while clones need them."""
        with contextlib.suppress(xexc.XenAPIError):
            self.session.call_xenapi("VDI.set_other_config", ref, {})
        sr.destroy_vdi(self.session, ref)

    # -- expiry ---------------------------------------------------------------------------
    def entries(self, sr_ref: str) -> dict[str, dict[str, Any]]:
        return {
            ref: rec
            for ref, rec in sr.vdi_records(self.session, sr_ref).items()
            if (rec.get("other_config") or {}).get(CACHE_KEY) and rec.get("managed", True)
        }

    def expire(self, sr_ref: str, used_images: set[str], max_age: float) -> list[str]:
        """Remove entries of images no instance uses that were last used over ``max_age`` s ago.

        Entries of images in use get their last-use time refreshed, so an image
        counts as unused only from when its last instance went away. Returns the
        removed image ids.
        """
        now = self.clock()
        removed = []
        for ref, rec in self.entries(sr_ref).items():
            other = dict(rec.get("other_config") or {})
            image_id = other[CACHE_KEY]
            if image_id in used_images:
                other[USED_KEY] = str(int(now))
                with contextlib.suppress(xexc.XenAPIError):
                    self.session.call_xenapi("VDI.set_other_config", ref, other)
                continue
            try:
                last = float(other.get(USED_KEY) or 0)
            except ValueError:
                last = 0.0
            if now - last < max_age:
                continue
            with self.lock(sr_ref, image_id):
                LOG.info(
                    "Removing cached image %s from SR %s (unused for %d s)", image_id, sr_ref, now - last
                )
                try:
                    self._retire(ref)
                    removed.append(image_id)
                except xexc.XenAPIError as exc:
                    LOG.warning("Could not remove cached image %s: %s", image_id, exc)
        if removed:
            sr.scan(self.session, sr_ref)
        return removed
