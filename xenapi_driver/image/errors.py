"""How image problems reach Nova: as the exceptions Nova's compute manager understands.

A bad image (not what its formats claim, a broken chain, a truncated VHD) is
``ImageUnacceptable``, so Nova fails the build at once instead of
rescheduling it to another host that would fail the same way. Glance being
unreachable is ``GlanceConnectionFailed``. XAPI and plug-in failures are
translated here, in one place, so every handler reports them alike.
"""

from __future__ import annotations

from nova import exception as nova_exception
from xenapi_driver import exception as xexc

#: Plug-in / XAPI codes that mean "the image's bytes are wrong".
BAD_IMAGE_CODES = frozenset({"GLANCE_BAD_IMAGE", "VHD_CHAIN_INVALID", "VDI_IO_ERROR", "TOO_LARGE"})


def bad_image(image_id: str, reason: str) -> nova_exception.ImageUnacceptable:
    return nova_exception.ImageUnacceptable(image_id=image_id, reason=reason)


def translate(exc: Exception, image_id: str, endpoint: str | None = None) -> Exception:
    """The Nova exception for a failure while moving image ``image_id``; ``exc`` itself if unknown."""
    if isinstance(exc, xexc.XenAPIError):
        detail = "; ".join(str(p) for p in exc.params if p)[:800]
        if exc.code == "GLANCE_UNREACHABLE":
            return nova_exception.GlanceConnectionFailed(server=endpoint or exc.params[:1], reason=detail)
        if exc.code == "GLANCE_ERROR" and exc.params[:1] == ["404"]:
            return nova_exception.ImageNotFound(image_id=image_id)
        if exc.code in ("GLANCE_ERROR",) and exc.params[:1] in (["401"], ["403"]):
            return nova_exception.ImageNotAuthorized(image_id=image_id)
        if exc.code in BAD_IMAGE_CODES:
            return bad_image(image_id, f"{exc.code}: {detail}")
    return exc
