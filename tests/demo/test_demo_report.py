"""The demo's reporting pieces on their own: timeline, step lines, downtime, progress display."""

from __future__ import annotations

import io

from xenapi_driver.demo import report
from xenapi_driver.demo.report import FAILED, OK, SKIPPED, StepResult
from xenapi_driver.demo.simulation import PowerWatcher, bytes_written


def test_bytes_written_counts_new_and_grown_files_only() -> None:
    before = {"a": 100, "b": 50}
    after = {"a": 160, "b": 10, "c": 7}
    assert bytes_written(before, after) == 60 + 7


def _watcher(samples: list[tuple[float, str, str]]) -> PowerWatcher:
    watcher = PowerWatcher(sim=None)  # type: ignore[arg-type]  (no threads started)
    watcher.samples = samples
    return watcher


def test_downtime_is_the_gap_between_source_halted_and_destination_running() -> None:
    w = _watcher(
        [
            (0.0, "src", "Running"),
            (10.0, "src", "Halted"),
            (12.5, "dst", "Halted"),
            (13.0, "dst", "Running"),
            (14.0, "src", "Halted"),
        ]
    )
    assert w.downtime(5.0, 20.0) == 3.0


def test_downtime_of_a_live_migration_without_a_stop_is_zero() -> None:
    w = _watcher([(0.0, "vm", "Running"), (10.0, "vm", "Running")])
    assert w.downtime(5.0, 20.0) == 0.0


def test_downtime_unknown_without_events_in_the_window() -> None:
    w = _watcher([(0.0, "vm", "Running")])
    assert w.downtime(5.0, 20.0) is None


def test_downtime_still_down_at_the_end_counts_until_then() -> None:
    w = _watcher([(0.0, "vm", "Running"), (8.0, "vm", "Halted")])
    assert w.downtime(5.0, 20.0) == 12.0


def test_step_lines_and_timeline() -> None:
    results = [
        StepResult("boot", "boot", OK, 1.234, 28, [("VM.start", 1)], 16 * 1024**2, None, "server ACTIVE"),
        StepResult(
            "snapshot", "snap", SKIPPED, note="not available yet: XenAPIDriver does not implement snapshot"
        ),
        StepResult("resize", "resize", OK, 12.0, 80, [], 3 * 1024**2, 2.5),
        StepResult("delete", "delete", FAILED, 1.0, 5, note="RuntimeError: boom"),
    ]
    out = io.StringIO()
    for r in results:
        report.print_step(r, out)
    report.print_timeline(results, out)
    text = out.getvalue()
    assert "  boot          ok       1.23 s, 28 XAPI calls, 16.0 MiB copied\n" in text
    assert "server ACTIVE" in text
    assert "  snapshot      skipped  not available yet: XenAPIDriver does not implement snapshot" in text
    assert "downtime 2.50 s" in text
    assert "  delete        FAILED   RuntimeError: boom" in text
    table = text.split("Timeline\n", 1)[1]
    assert "  boot             ok         1.23 s          28   16.0 MiB         -" in table
    assert "  resize           ok         12.0 s          80    3.0 MiB    2.50 s" in table
    # Totals count only the steps that ran successfully.
    assert "  total                       13.2 s         108   19.0 MiB" in table
    assert "VM.start x1" in table


def test_progress_degrades_to_one_plain_line_without_a_terminal() -> None:
    out = io.StringIO()
    with report.Progress("boot", "boot the server", lambda: (5, 10), out, tty=False):
        pass
    assert out.getvalue() == "  boot          ...      boot the server\n"


def test_progress_draws_a_bar_on_a_terminal_and_clears_it() -> None:
    out = io.StringIO()
    progress = report.Progress("boot", "boot the server", lambda: (5, 10), out, tty=True)
    assert "[##############..............]  50.0%" in progress._line(0)
    assert "spin" in report.Progress("x", "spin", lambda: (0, None), out, tty=True)._line(1)
    with progress:
        pass
    assert out.getvalue().endswith("\r")
    assert progress._thread is None


def test_human_units() -> None:
    assert report.human_bytes(0) == "-"
    assert report.human_bytes(512) == "512 B"
    assert report.human_bytes(1536) == "1.5 KiB"
    assert report.human_seconds(None) == "-"
    assert report.human_seconds(0.5) == "0.50 s"
    assert report.human_seconds(42.0) == "42.0 s"
