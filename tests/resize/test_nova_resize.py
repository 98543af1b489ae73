"""Nova REST API resize / cold-migration tests, run in a child interpreter as tests/nova does.

The child runs ``nova_resize.test_functional_resize`` (see
:func:`resize_helpers.run_nova_functional` for why a child).

All rsync-transport tests run; the xapi transport runs cold-migrate/revert/confirm
(the transport is the only difference; test_resize_flow covers both in depth);
the same-host class resizes on the only compute (no transport involved).
"""

from __future__ import annotations

from pathlib import Path

from resize_helpers import run_nova_functional

MODULE = "nova_resize.test_functional_resize"
NAMES = [
    f"{MODULE}.XenAPIResizeRsyncTest",
    f"{MODULE}.XenAPIResizeXapiTest.test_cold_migrate_then_confirm_and_revert",
    f"{MODULE}.XenAPISameHostResizeTest",
]


def test_resize_through_novas_rest_api(tmp_path: Path) -> None:
    run_nova_functional(tmp_path, NAMES, expected_run=8, what="Nova resize tests")
