"""What the demo prints: progress bars while a step runs, the timeline at the end.

Standard library only. On a terminal a step shows a redrawn bar (or a
spinner when its size is unknown); when stdout is not a terminal (a log, a
CI job, a test) each step prints plain lines instead, so output stays
readable and stable.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

#: Steps end in one of these.
OK, SKIPPED, FAILED = "ok", "skipped", "FAILED"


def human_bytes(n: int | None) -> str:
    """``1.5 MiB`` style; ``-`` for nothing."""
    if not n:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def human_seconds(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s:.2f} s" if s < 10 else f"{s:.1f} s"


@dataclass
class StepResult:
    """One line of the timeline."""

    name: str
    title: str
    status: str = OK
    seconds: float | None = None
    xapi_calls: int | None = None
    top_calls: list[tuple[str, int]] = field(default_factory=list)
    bytes_copied: int | None = None
    downtime: float | None = None
    note: str = ""


class Progress:
    """A progress display for one step, drawn from a background thread.

    ``sample`` returns ``(done, total)``; ``total`` of None or 0 means unknown
    (a spinner with the elapsed time). The thread is joined by :meth:`close`.
    """

    WIDTH = 28
    SPIN = "|/-\\"

    def __init__(
        self, name: str, title: str, sample: Callable[[], tuple[int, int | None]], out: TextIO, tty: bool
    ) -> None:
        self.name = name
        self.title = title
        self.sample = sample
        self.out = out
        self.tty = tty
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Progress:
        if self.tty:
            self._thread = threading.Thread(target=self._run, name="demo-progress", daemon=True)
            self._thread.start()
        else:
            print(f"  {self.name:<13} ...      {self.title}", file=self.out, flush=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
            # Clear the bar's line; the caller prints the step's result.
            print("\r" + " " * 78 + "\r", end="", file=self.out, flush=True)

    def _line(self, tick: int) -> str:
        elapsed = time.monotonic() - self.started
        try:
            done, total = self.sample()
        except Exception:  # noqa: BLE001 - a failed sample must never break the step
            done, total = 0, None
        if total:
            frac = max(0.0, min(1.0, done / total))
            filled = int(frac * self.WIDTH)
            bar = "#" * filled + "." * (self.WIDTH - filled)
            return f"  {self.name:<13} [{bar}] {frac * 100:5.1f}% {human_bytes(done):>9} {elapsed:5.1f} s"
        extra = f" {human_bytes(done)}" if done else ""
        spin = self.SPIN[tick % len(self.SPIN)]
        return f"  {self.name:<13} {spin} {elapsed:5.1f} s{extra}  {self.title}"

    def _run(self) -> None:
        tick = 0
        while not self._stop.wait(0.1):
            print("\r" + self._line(tick)[:78], end="", file=self.out, flush=True)
            tick += 1


def print_step(result: StepResult, out: TextIO) -> None:
    """The line (two with a note) a finished step prints."""
    if result.status == OK:
        parts = [human_seconds(result.seconds)]
        if result.xapi_calls is not None:
            parts.append(f"{result.xapi_calls} XAPI calls")
        if result.bytes_copied:
            parts.append(f"{human_bytes(result.bytes_copied)} copied")
        if result.downtime is not None:
            parts.append(f"downtime {human_seconds(result.downtime)}")
        detail = ", ".join(parts)
    else:
        detail = result.note
    print(f"  {result.name:<13} {result.status:<8} {detail}", file=out)
    if result.status == OK and result.note:
        print(f"  {'':<13} {'':<8} {result.note}", file=out)
    out.flush()


def print_timeline(results: list[StepResult], out: TextIO) -> None:
    """The summary table: duration, XAPI calls, bytes copied and downtime per step, and their totals."""
    print("", file=out)
    print("Timeline", file=out)
    header = f"  {'step':<16} {'result':<8} {'time':>8} {'XAPI calls':>11} {'copied':>10} {'downtime':>9}"
    print(header, file=out)
    print("  " + "-" * (len(header) - 2), file=out)
    for r in results:
        calls = "-" if r.xapi_calls is None else str(r.xapi_calls)
        print(
            f"  {r.name:<16} {r.status:<8} {human_seconds(r.seconds):>8} {calls:>11} "
            f"{human_bytes(r.bytes_copied):>10} {human_seconds(r.downtime):>9}",
            file=out,
        )
    print("  " + "-" * (len(header) - 2), file=out)
    ran = [r for r in results if r.status == OK]
    calls = sum(r.xapi_calls or 0 for r in ran)
    copied = sum(r.bytes_copied or 0 for r in ran)
    seconds = sum(r.seconds or 0.0 for r in ran)
    print(
        f"  {'total':<16} {'':<8} {human_seconds(seconds):>8} {calls:>11} {human_bytes(copied):>10}",
        file=out,
    )
    busiest = [r for r in ran if r.top_calls]
    if busiest:
        print("", file=out)
        print("Most frequent XAPI calls per step", file=out)
        for r in busiest:
            calls_text = ", ".join(f"{name} x{count}" for name, count in r.top_calls)
            print(f"  {r.name:<16} {calls_text}", file=out)
    out.flush()


def is_tty(out: TextIO) -> bool:
    try:
        return out.isatty()
    except (AttributeError, ValueError):
        return False


def stdout() -> TextIO:
    return sys.stdout
