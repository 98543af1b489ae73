"""The image cache in the SR: copy once, clone after; 'some' mode; expiry through manage_image_cache."""

from __future__ import annotations

import pytest
from image_helpers import chain_tgz, make_chain, make_instance, raw_disk, vdi_bytes

from nova import objects
from xenapi_driver.image import XenAPIImageSource
from xenapi_driver.image.cache import CACHE_KEY, USED_KEY


def _meta(image_id: str) -> objects.ImageMeta:
    return objects.ImageMeta.from_dict({"id": image_id})


def cache_entries(sim, image_id: str) -> list[str]:
    db = sim.pool.db
    return [r for r in db.all("VDI") if db.get("VDI", r)["other_config"].get(CACHE_KEY) == image_id]


@pytest.mark.parametrize("handler", ["direct_vhd", "vdi_remote_stream"])
def test_first_boot_copies_later_boots_clone(
    handler, conf, session, sim, context, glance, sr_ref, sr_dir, tmp_path
):
    conf.set_override("image_handler", handler, group="xenserver")
    conf.set_override("cache_images", "all", group="xenserver")
    paths, expected = make_chain(tmp_path / "chain", depth=2)
    image_id = glance.add(chain_tgz(paths), "vhd", "ovf")
    source = XenAPIImageSource(session)

    first = source.root_vdi(context, make_instance(), _meta(image_id), sr_ref)
    downloads = sum(1 for m, p, _ in glance.requests if m == "GET" and p.endswith(f"{image_id}/file"))
    assert downloads == 1
    assert len(cache_entries(sim, image_id)) == 1

    sim.reset_call_counts()
    second = source.root_vdi(context, make_instance(), _meta(image_id), sr_ref)
    calls = {m: n for m, n in sim.call_counts.items() if n and m not in ("event.from",)}
    assert sum(1 for m, p, _ in glance.requests if m == "GET" and p.endswith(f"{image_id}/file")) == 1
    assert calls.get("VDI.clone") == 1
    assert (
        "VDI.create" not in calls and "host.call_plugin" not in calls and "PUT /import_raw_vdi" not in calls
    )
    assert sum(calls.values()) <= 6  # constant: lookup, clone, names and last-use

    db = sim.pool.db
    for vdi in (first, second):
        rec = db.get("VDI", vdi)
        assert rec["managed"] and CACHE_KEY not in rec["other_config"]
        assert vdi_bytes(sr_dir, rec["uuid"]) == expected
    assert first != second


def test_some_caches_only_images_that_ask(conf, session, sim, context, glance, sr_ref):
    conf.set_override("image_handler", "vdi_remote_stream", group="xenserver")
    conf.set_override("cache_images", "some", group="xenserver")
    asks = glance.add(raw_disk(), "raw", "bare", cache_in_nova="true")
    plain = glance.add(raw_disk(), "raw", "bare")
    source = XenAPIImageSource(session)
    source.root_vdi(context, make_instance(), _meta(asks), sr_ref)
    source.root_vdi(context, make_instance(), _meta(plain), sr_ref)
    assert len(cache_entries(sim, asks)) == 1
    assert cache_entries(sim, plain) == []


def test_none_never_caches(conf, session, sim, context, glance, sr_ref):
    conf.set_override("image_handler", "vdi_remote_stream", group="xenserver")
    image_id = glance.add(raw_disk(), "raw", "bare", cache_in_nova="true")
    XenAPIImageSource(session).root_vdi(context, make_instance(), _meta(image_id), sr_ref)
    assert cache_entries(sim, image_id) == []


def test_chain_limit_replaces_the_entry(conf, session, sim, context, glance, sr_ref, sr_dir):
    """XenServer refuses clones at chain depth 30: the entry is replaced by a flat copy."""
    conf.set_override("image_handler", "vdi_remote_stream", group="xenserver")
    conf.set_override("cache_images", "all", group="xenserver")
    data = raw_disk()
    image_id = glance.add(data, "raw", "bare")
    source = XenAPIImageSource(session)
    source.root_vdi(context, make_instance(), _meta(image_id), sr_ref)
    sim.faults.fail_next("VDI.clone", "SR_BACKEND_FAILURE_109", "", "The snapshot chain is too long", "")
    old = cache_entries(sim, image_id)
    vdi = source.root_vdi(context, make_instance(), _meta(image_id), sr_ref)
    new = cache_entries(sim, image_id)
    assert len(new) == 1 and new != old
    assert vdi_bytes(sr_dir, sim.pool.db.get("VDI", vdi)["uuid"], len(data)) == data


def test_manage_image_cache_removes_old_unused_images(conf, session, sim, context, glance, sr_ref, sr_dir):
    conf.set_override("image_handler", "vdi_remote_stream", group="xenserver")
    conf.set_override("cache_images", "all", group="xenserver")
    conf.set_override("remove_unused_original_minimum_age_seconds", 3600, group="image_cache")
    used_id = glance.add(raw_disk(), "raw", "bare")
    unused_id = glance.add(raw_disk(), "raw", "bare")
    source = XenAPIImageSource(session, sr_finder=lambda: sr_ref)
    now = [1_000_000.0]
    source.cache.clock = lambda: now[0]
    user = make_instance(image_ref=used_id)
    kept = source.root_vdi(context, user, _meta(used_id), sr_ref)
    gone = source.root_vdi(context, make_instance(image_ref=unused_id), _meta(unused_id), sr_ref)
    session.call_xenapi("VDI.destroy", gone)  # that instance was deleted

    instances = objects.InstanceList(objects=[user])
    now[0] += 1800  # younger than the minimum age: nothing goes
    assert source.manage_image_cache(context, instances) == []
    now[0] += 3600
    assert source.manage_image_cache(context, instances) == [unused_id]
    assert cache_entries(sim, unused_id) == []
    entry = cache_entries(sim, used_id)
    assert len(entry) == 1
    assert sim.pool.db.get("VDI", entry[0])["other_config"][USED_KEY] == str(int(now[0]))
    # The unused image's files are gone from the SR; the used one's clone still reads.
    uuids = {p.stem for p in sr_dir.glob("*.vhd")}
    assert sim.pool.db.get("VDI", kept)["uuid"] in uuids
    conf.clear_override("remove_unused_original_minimum_age_seconds", group="image_cache")


def test_cache_image_precaches_once(conf, session, sim, context, glance, sr_ref):
    conf.set_override("image_handler", "vdi_remote_stream", group="xenserver")
    conf.set_override("cache_images", "all", group="xenserver")
    image_id = glance.add(raw_disk(), "raw", "bare")
    source = XenAPIImageSource(session, sr_finder=lambda: sr_ref)
    assert source.cache_image(context, image_id) is True
    assert source.cache_image(context, image_id) is False
    assert len(cache_entries(sim, image_id)) == 1


def test_concurrent_first_boots_download_once(conf, session, sim, context, glance, sr_ref, sr_dir):
    import threading

    conf.set_override("image_handler", "vdi_remote_stream", group="xenserver")
    conf.set_override("cache_images", "all", group="xenserver")
    data = raw_disk()
    image_id = glance.add(data, "raw", "bare")
    source = XenAPIImageSource(session)
    results, errors = [], []

    def boot() -> None:
        try:
            results.append(source.root_vdi(context, make_instance(), _meta(image_id), sr_ref))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=boot) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and len(set(results)) == 4
    assert sum(1 for m, p, _ in glance.requests if m == "GET" and p.endswith(f"{image_id}/file")) == 1
    assert len(cache_entries(sim, image_id)) == 1
    for vdi in results:
        assert vdi_bytes(sr_dir, sim.pool.db.get("VDI", vdi)["uuid"], len(data)) == data
