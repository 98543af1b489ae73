"""Nova REST API resize-down tests (ext4 root), run in a child interpreter as tests/nova does.

Why a child: Nova's test packages choose the concurrency mode at first import
and pytest breaks their mock decorators (tests/nova/README.md). The child runs
``nova_resize.test_functional_resize_down`` under stdlib unittest through
``xenapi_nova_tests._runner`` and writes a JSON report this test reads.

All rsync-transport tests run; the xapi transport runs resize down then confirm
(the transport is the only difference; test_resize_down covers both).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
CHILD_TIMEOUT = 600
MODULE = "nova_resize.test_functional_resize_down"
NAMES = [
    f"{MODULE}.XenAPIResizeDownRsyncTest",
    f"{MODULE}.XenAPIResizeDownXapiTest.test_resize_down_ext4_then_confirm",
]


def test_resize_down_through_novas_rest_api(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT), str(REPO_ROOT / "tests" / "nova"), str(HERE)]
        + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    env["OS_NOVA_DISABLE_EVENTLET_PATCHING"] = "1"
    command = [sys.executable, "-m", "xenapi_nova_tests._runner", "--json", str(report_path), *NAMES]
    try:
        child = subprocess.run(
            command, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=CHILD_TIMEOUT,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail(f"Nova resize-down tests did not finish within {CHILD_TIMEOUT} s", pytrace=False)
    tail = (child.stdout + child.stderr)[-8000:]
    if not report_path.exists():
        pytest.fail(f"runner exited {child.returncode} without a report:\n{tail}", pytrace=False)
    report = json.loads(report_path.read_text(encoding="utf-8"))
    problems = report["failures"] + report["errors"]
    if problems or child.returncode != 0:
        details = "\n\n".join(f"{p['id']}\n{p['traceback']}" for p in problems)
        pytest.fail(
            f"{len(problems)} of {report['tests_run']} failed:\n{details}\n--- tail ---\n{tail}",
            pytrace=False,
        )
    assert report["tests_run"] == 5
    if len(report["skipped"]) == report["tests_run"]:
        pytest.skip("; ".join(sorted({s["reason"] for s in report["skipped"]})))
