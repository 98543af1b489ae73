"""Run Nova-based tests with stdlib unittest and write a JSON report.

Usage: ``python -m xenapi_nova_tests._runner --json OUT NAME [NAME...]`` where
each NAME is a module, class or test id importable from ``tests/nova``.
The pytest wrapper (``tests/nova/test_nova_suites.py``) reads the report to
name failing tests, skips and durations; by hand, the verbose unittest output
on stderr is enough.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import unittest

import xenapi_nova_tests  # noqa: F401  (first: chooses Nova's concurrency mode)

NOT_IMPLEMENTED_LOGGER = "nova.tests.unit.virt.test_virt_drivers"


class _NotImplementedCollector(logging.Handler):
    """Collects ``_VirtDriverTestCase``'s "does not implement" log lines."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "does not implement" in message:
            self.messages.append(message)


class _RecordingResult(unittest.TextTestResult):
    """A TextTestResult that also remembers each test's duration."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.durations: dict[str, float] = {}
        self._started: dict[str, float] = {}

    def startTest(self, test: unittest.TestCase) -> None:  # noqa: N802 (unittest API)
        self._started[test.id()] = time.monotonic()
        super().startTest(test)

    def stopTest(self, test: unittest.TestCase) -> None:  # noqa: N802 (unittest API)
        super().stopTest(test)
        started = self._started.pop(test.id(), None)
        if started is not None:
            self.durations[test.id()] = round(time.monotonic() - started, 3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True, help="where to write the report")
    parser.add_argument("names", nargs="+")
    args = parser.parse_args(argv)

    collector = _NotImplementedCollector()
    logging.getLogger(NOT_IMPLEMENTED_LOGGER).addHandler(collector)

    started = time.monotonic()
    suite = unittest.TestLoader().loadTestsFromNames(args.names)
    runner = unittest.TextTestRunner(stream=sys.stderr, verbosity=2, resultclass=_RecordingResult)
    result = runner.run(suite)

    report = {
        "names": args.names,
        "tests_run": result.testsRun,
        "failures": [{"id": t.id(), "traceback": tb} for t, tb in result.failures],
        "errors": [{"id": t.id(), "traceback": tb} for t, tb in result.errors],
        "unexpected_successes": [t.id() for t in result.unexpectedSuccesses],
        "skipped": [{"id": t.id(), "reason": reason} for t, reason in result.skipped],
        "durations": result.durations,
        "not_implemented": collector.messages,
        "seconds": round(time.monotonic() - started, 2),
    }
    with open(args.json, "w", encoding="utf-8") as out:
        json.dump(report, out, indent=1)
    return 0 if result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())
