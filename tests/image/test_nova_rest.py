"""Runs the REST API end-to-end image test (Nova's functional harness) in a child interpreter.

Nova's harness needs stdlib unittest and its concurrency mode chosen before
anything imports eventlet (see tests/nova/README.md), so it runs through
``xenapi_nova_tests._runner`` in a fresh process, as tests/nova does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_image_boots_and_snapshot_through_the_rest_api(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    paths = [
        REPO,
        REPO / "tests" / "nova",
        REPO / "tests" / "image",
        REPO / "tests" / "image" / "nova_functional",
    ]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(str(p) for p in paths))
    env.setdefault("OS_NOVA_DISABLE_EVENTLET_PATCHING", "1")
    proc = subprocess.run(
        [sys.executable, "-m", "xenapi_nova_tests._runner", "--json", str(report), "image_functional"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    if not report.exists():
        pytest.fail(f"the runner wrote no report (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    result = json.loads(report.read_text())
    problems = result["failures"] + result["errors"]
    if problems:
        pytest.fail(
            "\n\n".join(f"{p['id']}\n{p['traceback']}" for p in problems) + "\n" + proc.stderr[-3000:]
        )
    if result["skipped"] and result["tests_run"] == len(result["skipped"]):
        pytest.skip("; ".join(s["reason"] for s in result["skipped"]))
    assert result["tests_run"] == 2
