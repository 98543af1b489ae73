"""Access to Glance through Nova's own image API (``nova.image.glance.API``).

Using Nova's client means the image layer honours ``[glance]`` exactly as the
rest of nova-compute does: ``api_servers`` or the Keystone service catalog,
TLS settings, retries, the user's token. The dom0 plug-in needs the same two
things in plain form (a Glance URL and the token); :meth:`ImageAPI.dom0_endpoint`
derives them from Nova rather than from an option of our own.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import nova.conf

from nova import exception as nova_exception
from xenapi_driver.image import verify

CONF = nova.conf.CONF


def _translated(exc: Exception, image_id: str) -> Exception:
    """glanceclient's HTTP errors as the Nova exceptions ``download`` would raise."""
    import glanceclient.exc

    if isinstance(exc, (glanceclient.exc.HTTPForbidden, glanceclient.exc.HTTPUnauthorized)):
        return nova_exception.ImageNotAuthorized(image_id=image_id)
    if isinstance(exc, glanceclient.exc.HTTPNotFound):
        return nova_exception.ImageNotFound(image_id=image_id)
    return exc


class IterReader:
    """A read-only file object over an iterator of chunks (glanceclient uploads ``read()``)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = b""

    def read(self, n: int = -1) -> bytes:
        while n is None or n < 0 or len(self._buf) < n:
            try:
                self._buf += next(self._chunks)
            except StopIteration:
                break
        if n is None or n < 0:
            out, self._buf = self._buf, b""
        else:
            out, self._buf = self._buf[:n], self._buf[n:]
        return out


class ImageAPI:
    """The few Glance operations the image layer needs, on Nova's image API."""

    def __init__(self, api: Any = None) -> None:
        if api is None:
            from nova.image import glance

            api = glance.API()
        self._api = api

    def get(self, context: Any, image_id: str) -> dict[str, Any]:
        """Glance's record of the image (disk_format, container_format, size, properties...)."""
        return self._api.get(context, image_id)

    def chunks(self, context: Any, image_id: str, meta: dict[str, Any] | None = None) -> Iterator[bytes]:
        """The image's bytes, verified, as an iterator of chunks (nothing is written to local disk).

        With Nova's own image API and no image signature checking configured,
        glanceclient is asked for the bytes without its checksum, and
        :func:`verify.verified` checks the same hash on a helper thread (see
        there why); ``meta`` is Glance's record of the image when the caller
        has it. Otherwise Nova's ``download`` does all its checks itself.
        """
        if not self._fast_path():
            data = self._api.download(context, image_id)
            if data is None:
                raise nova_exception.ImageUnacceptable(image_id=image_id, reason="Glance returned no data")
            return iter(data)
        from nova.image import glance

        if meta is None:
            meta = self.get(context, image_id)
        try:
            data = glance.GlanceClientWrapper().call(
                context, 2, "data", args=(image_id,), kwargs={"do_checksum": False}
            )
        except nova_exception.NovaException:
            raise
        except Exception as exc:  # noqa: BLE001 - glanceclient's HTTP errors, as Nova translates them
            raise _translated(exc, image_id) from exc
        if data is None or getattr(data, "wrapped", data) is None:
            raise nova_exception.ImageUnacceptable(image_id=image_id, reason="Glance returned no data")
        return verify.verified(data, dict(meta, id=image_id))

    def _fast_path(self) -> bool:
        from nova.image import glance

        if type(self._api) is not glance.API:
            return False
        signatures = CONF.glance.verify_glance_signatures or (
            CONF.glance.enable_certificate_validation and CONF.glance.default_trusted_certificate_ids
        )
        return not signatures

    def set_formats(self, context: Any, image_id: str, disk_format: str, container_format: str,
                    properties: dict[str, Any] | None = None) -> None:  # fmt: skip
        """Set the formats (and extra properties) of a queued image before its data is sent."""
        meta: dict[str, Any] = {"disk_format": disk_format, "container_format": container_format}
        if properties:
            meta["properties"] = dict(properties)
        self._api.update(context, image_id, meta, purge_props=False)

    def upload(self, context: Any, image_id: str, meta: dict[str, Any], data: Any) -> None:
        """Send the image's data (an iterator of chunks or a file object) with its formats."""
        if not hasattr(data, "read"):
            data = IterReader(iter(data))
        self._api.update(context, image_id, meta, data=data, purge_props=False)

    @staticmethod
    def dom0_endpoint(context: Any) -> tuple[str, str | None]:
        """``(glance_url, token)`` for dom0: Nova's endpoint choice and the user's token."""
        from nova.image import glance

        url = str(glance.generate_glance_url(context)).rstrip("/")
        return url, getattr(context, "auth_token", None)
