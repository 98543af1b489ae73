"""Deadlines and back-off: the two things that keep every wait bounded.

Why: a host that reboots can leave a TCP connection half-open, accept a
connection and never send a banner, or stall mid-command. Every blocking
step takes its timeout from :class:`Deadline`, so nothing waits past the
overall timeout. :func:`poll_until` is the same loop without SSH, for callers
(the driver after ``pool.join``) whose readiness signal is something else.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Deadline:
    """A point in monotonic time; hands out timeouts that never go past it."""

    def __init__(self, timeout: float, clock: Callable[[], float] = time.monotonic) -> None:
        if timeout < 0:
            raise ValueError(f"timeout must be >= 0, got {timeout}")
        self._clock = clock
        self.start = clock()
        self.timeout = float(timeout)
        self.end = self.start + self.timeout

    @property
    def remaining(self) -> float:
        return max(0.0, self.end - self._clock())

    @property
    def elapsed(self) -> float:
        return self._clock() - self.start

    @property
    def expired(self) -> bool:
        return self._clock() >= self.end

    def bound(self, wanted: float) -> float:
        """``wanted`` seconds, cut to what is left (0 when nothing is left)."""
        return max(0.0, min(float(wanted), self.remaining))

    def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` but never past the deadline."""
        pause = self.bound(seconds)
        if pause > 0:
            time.sleep(pause)


class Backoff:
    """Delays that start at ``interval`` and grow by ``factor`` up to ``maximum``.

    ``reset()`` starts again at ``interval``; callers reset when the host's
    state changes so a freshly rebooted host is polled promptly.
    """

    def __init__(self, interval: float, factor: float = 1.5, maximum: float | None = None) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be > 0, got {interval}")
        if factor < 1:
            raise ValueError(f"backoff factor must be >= 1, got {factor}")
        self.interval = float(interval)
        self.factor = float(factor)
        self.maximum = float(maximum) if maximum is not None else max(self.interval, 60.0)
        if self.maximum < self.interval:
            raise ValueError(f"max interval {maximum} is below the interval {interval}")
        self._next = self.interval

    def reset(self) -> None:
        self._next = self.interval

    def next_delay(self) -> float:
        delay = self._next
        self._next = min(self._next * self.factor, self.maximum)
        return delay


def poll_until(
    predicate: Callable[[], bool],
    timeout: float,
    interval: float = 1.0,
    backoff: float = 1.5,
    max_interval: float | None = None,
    what: str = "condition",
) -> float:
    """Call ``predicate`` until it returns true; return the seconds it took.

    Exceptions from ``predicate`` propagate (decide in the predicate what is
    transient). Raises :class:`~xenapi_driver.readiness.errors.ReadinessTimeout`
    naming ``what`` when ``timeout`` passes.
    """
    from xenapi_driver.readiness.errors import ReadinessTimeout

    deadline = Deadline(timeout)
    delays = Backoff(interval, backoff, max_interval)
    attempts = 0
    while True:
        attempts += 1
        if predicate():
            return deadline.elapsed
        if deadline.expired:
            raise ReadinessTimeout(f"{what} not reached after {timeout:g}s ({attempts} attempts)")
        deadline.sleep(delays.next_delay())
