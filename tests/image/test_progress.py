"""Transfers log progress at least every 10 %; the read-ahead thread hands over errors and stops."""

from __future__ import annotations

import logging
import re
import threading

import pytest
from image_helpers import MiB, make_instance, pattern, raw_disk

from nova import objects
from xenapi_driver.image import XenAPIImageSource
from xenapi_driver.image.pipeline import ReadAhead
from xenapi_driver.image.progress import Progress


def percents(caplog, what: str) -> list[int]:
    return [
        int(m.group(1))
        for r in caplog.records
        if what in r.getMessage() and (m := re.search(r": (\d+)%", r.getMessage()))
    ]


def assert_every_tenth(seen: list[int]) -> None:
    """A line in each 10 % band (10-19 %, 20-29 %, ... 90-99 %) and one at 100 %."""
    assert seen[-1] == 100
    assert {p // 10 for p in seen[:-1]} >= set(range(1, 10)), seen


def test_download_logs_every_ten_percent(conf, session, context, glance, sr_ref, caplog):
    conf.set_override("image_handler", "vdi_remote_stream", group="xenserver")
    image_id = glance.add(raw_disk(24 * MiB), "raw", "bare")
    caplog.set_level(logging.INFO, logger="xenapi_driver.image.progress")
    XenAPIImageSource(session).root_vdi(
        context, make_instance(), objects.ImageMeta.from_dict({"id": image_id}), sr_ref
    )
    assert_every_tenth(percents(caplog, f"download of image {image_id}"))


def test_progress_unit_steps(caplog):
    caplog.set_level(logging.INFO, logger="xenapi_driver.image.progress")
    progress = Progress("copy", 1000)
    for _ in range(13):
        progress.add(77)  # uneven chunks still log in every 10 % band
    progress.finish()
    assert_every_tenth(percents(caplog, "copy"))


def test_read_ahead_passes_errors_and_order():
    def source():
        yield b"a"
        yield b"b"
        raise OSError("glance went away")

    got = []
    with pytest.raises(OSError, match="glance went away"):
        for chunk in ReadAhead(source()):
            got.append(chunk)
    assert got == [b"a", b"b"]


def test_read_ahead_stops_when_the_consumer_gives_up():
    produced = []

    def endless():
        n = 0
        while True:
            produced.append(n)
            yield b"x" * 10
            n += 1

    ahead = ReadAhead(endless(), depth=4)
    iterator = iter(ahead)
    next(iterator)
    ahead.close()
    count = len(produced)
    assert not any(
        t.name == "image-read-ahead" and t.is_alive() for t in threading.enumerate() if t is ahead._thread
    )
    assert len(produced) == count  # nothing read after close


@pytest.mark.parametrize("handler", ["vdi_remote_stream", "vdi_local_dev"])
def test_upload_logs_every_ten_percent(handler, conf, session, context, glance, sr_ref, caplog):
    from xenapi_driver.image import ImageAPI, handler_for

    conf.set_override("image_handler", "vdi_remote_stream", group="xenserver")
    image_id = glance.add(pattern("dense", 8 * MiB), "raw", "bare")
    vdi = XenAPIImageSource(session).root_vdi(
        context, make_instance(), objects.ImageMeta.from_dict({"id": image_id}), sr_ref
    )
    caplog.set_level(logging.INFO, logger="xenapi_driver.image.progress")
    target = glance.queued()
    handler_for(session, ImageAPI(), handler).upload(context, target, sr_ref, vdi, {})
    assert glance.images[target]["status"] == "active"
    assert_every_tenth(percents(caplog, f"upload of image {target}"))
