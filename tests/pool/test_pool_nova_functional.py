"""Run the Nova REST API test of pools and live migration (tests/pool/functional).

Like tests/nova/test_nova_suites.py: Nova's functional harness must choose its
concurrency mode before anything imports eventlet and pytest breaks its mock
decorators, so the test runs in a fresh child interpreter under
``xenapi_nova_tests._runner`` and this wrapper reports its JSON result.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
CHILD_TIMEOUT = 270


def test_pool_aggregate_and_live_migration_through_nova_api(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    env = dict(os.environ)
    paths = [str(REPO_ROOT), str(REPO_ROOT / "tests" / "nova"), str(HERE / "functional")]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["OS_NOVA_DISABLE_EVENTLET_PATCHING"] = "1"
    command = [
        sys.executable,
        "-m",
        "xenapi_nova_tests._runner",
        "--json",
        str(report_path),
        "pool_functional",
    ]
    try:
        child = subprocess.run(
            command,
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT,
        )
    except subprocess.TimeoutExpired as exc:
        output = exc.stderr or b""
        if isinstance(output, bytes):
            output = output.decode(errors="replace")
        pytest.fail(f"the Nova functional pool test did not finish in {CHILD_TIMEOUT} s:\n{output[-8000:]}")
    tail = (child.stdout + child.stderr)[-8000:]
    if not report_path.exists():
        pytest.fail(f"runner exited {child.returncode} without a report:\n{tail}", pytrace=False)
    report = json.loads(report_path.read_text(encoding="utf-8"))
    problems = report["failures"] + report["errors"]
    if problems or child.returncode != 0:
        details = "\n\n".join(f"{p['id']}\n{p['traceback']}" for p in problems)
        pytest.fail(f"{details}\n--- output tail ---\n{tail}", pytrace=False)
    assert report["tests_run"] == 1 and not report["skipped"], report
