"""Run the Nova-based tests (tests/nova/xenapi_nova_tests) from our pytest command.

Nova's test machinery is testtools/unittest based: pytest breaks its mock
decorators, and Nova must choose its concurrency mode (native threads or
eventlet) before anything in the process imports eventlet, which other parts
of our pytest session may already have done. So each group of Nova-based
tests runs in a fresh child interpreter under stdlib unittest
(``python -m xenapi_nova_tests._runner``), and this module turns the child's
JSON report into one pytest result per group: a failure lists every failing
Nova test with its traceback and the tail of the child's output; a group whose
tests were all skipped is reported as skipped with their reasons.
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

# Below pytest-timeout's 300 s per test, so a hung child is killed by us and
# reported with its output rather than by the timeout plug-in.
CHILD_TIMEOUT = 270

# (pytest id, unittest names, environment overrides)
GROUPS = [
    ("signatures", ["xenapi_nova_tests.test_signatures"], {}),
    (
        "virt_driver_suite_fake",
        ["xenapi_nova_tests.test_virt_drivers.FakeConnectionTestCase"],
        {},
    ),
    (
        "virt_driver_suite_xenapi",
        ["xenapi_nova_tests.test_virt_drivers.XenAPIDriverTestCase"],
        {},
    ),
    (
        "virt_driver_suite_xenapi_eventlet",
        ["xenapi_nova_tests.test_virt_drivers.XenAPIDriverTestCase"],
        {"OS_NOVA_DISABLE_EVENTLET_PATCHING": "0"},
    ),
    (
        "functional_fake",
        ["xenapi_nova_tests.test_functional.FakeDriverServerLifecycleTest"],
        {},
    ),
    (
        "functional_xenapi",
        ["xenapi_nova_tests.test_functional.XenAPIDriverServerLifecycleTest"],
        {},
    ),
]


def _child_env(overrides: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    # The checkout first, so its xenapi_driver wins over any installed copy.
    paths = [str(REPO_ROOT), str(HERE)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["OS_NOVA_DISABLE_EVENTLET_PATCHING"] = "1"
    env.update(overrides)
    return env


def _describe(report: dict) -> str:
    slowest = sorted(report["durations"].items(), key=lambda kv: -kv[1])[:5]
    lines = [
        f"{report['tests_run']} Nova-based tests in {report['seconds']} s, {len(report['skipped'])} skipped",
        "slowest: " + ", ".join(f"{name.rsplit('.', 1)[-1]} {secs:.2f}s" for name, secs in slowest),
    ]
    if report["not_implemented"]:
        lines.append(f"{len(report['not_implemented'])} NotImplementedError logged:")
        lines.extend("  " + message for message in report["not_implemented"])
    return "\n".join(lines)


@pytest.mark.parametrize(("names", "env"), [(g[1], g[2]) for g in GROUPS], ids=[g[0] for g in GROUPS])
def test_nova_suite(names: list[str], env: dict[str, str], tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    command = [sys.executable, "-m", "xenapi_nova_tests._runner", "--json", str(report_path), *names]
    try:
        child = subprocess.run(
            command,
            cwd=tmp_path,
            env=_child_env(env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT,
        )
    except subprocess.TimeoutExpired as exc:
        output = (exc.stderr or b"")[-8000:]
        if isinstance(output, bytes):
            output = output.decode(errors="replace")
        pytest.fail(
            f"Nova-based tests {names} did not finish within {CHILD_TIMEOUT} s:\n{output}", pytrace=False
        )

    output_tail = (child.stdout + child.stderr)[-8000:]
    if not report_path.exists():
        pytest.fail(
            f"Nova-based test runner exited {child.returncode} without a report "
            f"(import error?):\n{output_tail}",
            pytrace=False,
        )
    report = json.loads(report_path.read_text(encoding="utf-8"))
    print(_describe(report))

    problems = report["failures"] + report["errors"]
    if problems or report["unexpected_successes"] or child.returncode != 0:
        details = "\n\n".join(f"{p['id']}\n{p['traceback']}" for p in problems)
        names_failed = "\n".join("  " + p["id"] for p in problems)
        pytest.fail(
            f"{len(problems)} of {report['tests_run']} Nova-based tests failed "
            f"(runner exit {child.returncode}):\n{names_failed}\n\n{details}\n\n"
            f"--- output tail ---\n{output_tail}",
            pytrace=False,
        )
    if report["tests_run"] == 0:
        pytest.fail(f"no Nova-based tests ran for {names}", pytrace=False)
    if len(report["skipped"]) == report["tests_run"]:
        reasons = sorted({s["reason"] for s in report["skipped"]})
        pytest.skip("; ".join(reasons))
