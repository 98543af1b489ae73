"""The driver-owned timer: Nova 34 has no periodic hook for drivers."""

from __future__ import annotations

import threading

from xenapi_driver.pool import ReconcileThread


class _CountingPool:
    """Stands in for ResourcePool at the thread's edge: counts runs, fails once."""

    def __init__(self, wanted: int) -> None:
        self.contexts: list[object] = []
        self.done = threading.Event()
        self._wanted = wanted

    def reconcile(self, context: object) -> None:
        self.contexts.append(context)
        if len(self.contexts) >= self._wanted:
            self.done.set()
        if len(self.contexts) == 1:
            raise RuntimeError("conductor unreachable")  # the next run must still happen


def test_runs_periodically_survives_errors_and_stops_promptly():
    pool = _CountingPool(wanted=3)
    contexts = iter(range(1000))
    thread = ReconcileThread(pool, lambda: next(contexts), interval=0.01)
    thread.start()
    try:
        assert pool.done.wait(30), "the reconcile thread did not run three times"
    finally:
        thread.stop(timeout=30)
    assert pool.contexts[:3] == [0, 1, 2]  # a fresh context each run
    assert not any(t.name == "xenapi-pool-reconcile" and t.is_alive() for t in threading.enumerate())


def test_stop_before_the_first_run_is_clean():
    pool = _CountingPool(wanted=1)
    thread = ReconcileThread(pool, object, interval=3600)
    thread.start()
    thread.stop(timeout=30)
    assert pool.contexts == []
    thread.stop()  # idempotent
