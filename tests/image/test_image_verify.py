"""Which Glance hash a download is checked against, and the check itself (xenapi_driver.image.verify)."""

from __future__ import annotations

import hashlib
import os

import pytest

from nova import exception as nova_exception
from xenapi_driver.image import verify

DATA = [os.urandom(1 << 20) for _ in range(5)] + [b"tail"]
BLOB = b"".join(DATA)
SHA512 = hashlib.sha512(BLOB).hexdigest()
MD5 = hashlib.md5(BLOB).hexdigest()  # noqa: S324 - Glance's checksum


@pytest.mark.parametrize(
    "meta, expected",
    [
        ({"checksum": MD5, "os_hash_algo": "sha512", "os_hash_value": SHA512}, ("sha512", SHA512)),
        ({"checksum": MD5, "properties": {"os_hash_algo": "SHA512", "os_hash_value": SHA512.upper()}},
         ("sha512", SHA512)),
        ({"checksum": MD5, "os_hash_algo": "no-such-hash", "os_hash_value": "ab"}, ("md5", MD5)),
        ({"checksum": MD5, "os_hash_algo": None, "os_hash_value": None}, ("md5", MD5)),
        ({"checksum": None}, (None, None)),
    ],
    ids=["multihash-first", "in-properties", "unknown-algo", "older-glance", "nothing"],
)  # fmt: skip
def test_the_strongest_hash_glance_gives_is_checked(meta, expected):
    assert verify.expected_digest(meta) == expected


@pytest.mark.parametrize("algo", ["sha512", "md5"])
def test_digest_on_a_helper_thread_equals_hashlib(algo):
    digest = verify.Digest(algo)
    for chunk in DATA:
        digest.update(chunk)
    assert digest.hexdigest() == hashlib.new(algo, BLOB).hexdigest()


def test_verified_passes_the_chunks_through_and_refuses_a_mismatch():
    meta = {"id": "img-1", "checksum": MD5, "os_hash_algo": "sha512", "os_hash_value": SHA512}
    assert list(verify.verified(iter(DATA), meta)) == DATA
    bad = dict(meta, os_hash_value="0" * 128)
    out = []
    with pytest.raises(nova_exception.ImageUnacceptable, match="sha512 is .* Glance recorded 0{128}"):
        for chunk in verify.verified(iter(DATA), bad):
            out.append(chunk)
    assert out == DATA  # the error comes before the iterator ends, after the last chunk


def test_abandoned_download_stops_the_hash_thread():
    meta = {"id": "img-1", "os_hash_algo": "sha512", "os_hash_value": SHA512}
    chunks = verify.verified(iter(DATA), meta)
    next(chunks)
    chunks.close()  # a consumer that gives up: no error, no thread left waiting
    assert list(verify.verified(iter(DATA), {"id": "img-2"})) == DATA  # nothing to check against


def test_a_failing_hash_never_blocks_the_reader_and_never_matches():
    digest = verify.Digest("sha512", depth=2)
    digest.update("not bytes")  # type: ignore[arg-type]  # hashlib raises TypeError on the helper thread
    for chunk in DATA * 4:  # more than the queue holds: the helper keeps draining
        digest.update(chunk)
    assert digest.hexdigest().startswith("(hashing failed: ")
