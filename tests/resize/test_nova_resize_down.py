"""Nova REST API resize-down tests (ext4 root), run in a child interpreter as tests/nova does.

The child runs ``nova_resize.test_functional_resize_down`` (see
:func:`resize_helpers.run_nova_functional` for why a child).

All rsync-transport tests run; the xapi transport runs resize down then confirm
(the transport is the only difference; test_resize_down covers both).
"""

from __future__ import annotations

from pathlib import Path

from resize_helpers import run_nova_functional

MODULE = "nova_resize.test_functional_resize_down"
NAMES = [
    f"{MODULE}.XenAPIResizeDownRsyncTest",
    f"{MODULE}.XenAPIResizeDownXapiTest.test_resize_down_ext4_then_confirm",
]


def test_resize_down_through_novas_rest_api(tmp_path: Path) -> None:
    run_nova_functional(tmp_path, NAMES, expected_run=5, what="Nova resize-down tests")
