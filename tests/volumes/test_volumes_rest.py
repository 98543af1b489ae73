"""Runs tests/volumes/rest/volume_rest_cases.py (Nova's functional harness) in a child interpreter.

Nova's harness needs stdlib unittest (pytest breaks its mock decorators) and
must pick Nova's concurrency mode before anything imports eventlet, so it runs
as tests/nova's groups do: ``python -m xenapi_nova_tests._runner`` with a JSON
report, turned into one pytest result here.
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
CHILD_TIMEOUT = 240


def test_volumes_through_nova_rest_api(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    env = dict(os.environ)
    paths = [str(REPO_ROOT), str(REPO_ROOT / "tests" / "nova"), str(HERE / "rest")]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["OS_NOVA_DISABLE_EVENTLET_PATCHING"] = "1"
    try:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "xenapi_nova_tests._runner",
                "--json",
                str(report_path),
                "volume_rest_cases",
            ],
            cwd=HERE / "rest",
            env=env,
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(
            f"the Nova REST test did not finish within {CHILD_TIMEOUT} s:\n{(exc.stderr or '')[-4000:]}"
        )
    if not report_path.exists():
        pytest.fail(f"the child wrote no report (exit {proc.returncode}):\n{proc.stderr[-6000:]}")
    report = json.loads(report_path.read_text())
    problems = report["failures"] + report["errors"]
    if problems:
        pytest.fail(
            "\n\n".join(f"{p['id']}\n{p['traceback']}" for p in problems) + "\n" + proc.stderr[-3000:]
        )
    if report["tests_run"] and len(report["skipped"]) == report["tests_run"]:
        pytest.skip("; ".join(s["reason"] for s in report["skipped"]))
    assert report["tests_run"] == 3  # volumes+password+consoles, boot from volume, swap+extend
