"""Fault injection: make the next call fail, add latency, drop connections.

Why: the driver's error handling (retries, re-login, task failure) must be
proven against the failures XAPI really produces, on demand.
"""

from __future__ import annotations

import threading
from collections import Counter, deque

from .errors import XapiError


class Faults:
    """Shared by every host of a simulator; all methods are thread-safe.

    Method names are canonical ``Class.msg`` or ``Async.Class.msg``.  A
    plain name fails the next call made either way (an ``Async.`` call
    reports it through its task's ``error_info``, as XAPI does); an
    ``Async.`` name fails only the next asynchronous call, whose task then
    ends in ``failure``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.latency = 0.0
        self._fail: dict[str, deque[XapiError]] = {}
        self._drop: Counter[str] = Counter()  # method or "*" -> remaining drops

    def fail_next(self, method: str, code: str, *params: object, count: int = 1) -> None:
        """Fail the next ``count`` calls of ``method`` with ``[code, *params]``.

        ``method`` is XAPI's ``Class.msg`` or ``Async.Class.msg`` (checked
        against the schema, so a typo fails here instead of never firing).
        """
        from .dispatch import async_allowed
        from .schema import load

        is_async = method.startswith("Async.")
        cls, _, msg = method.removeprefix("Async.").partition(".")
        found = load().message(cls, msg)
        if found is None:
            raise ValueError(
                f"fail_next: {method!r} is not a XAPI message"
                " (expected 'Class.msg' or 'Async.Class.msg', e.g. 'VM.start', 'Async.VM.start')"
            )
        if is_async and not async_allowed(found):
            raise ValueError(f"fail_next: XAPI has no asynchronous form of {cls}.{msg} ({method!r})")
        with self._lock:
            q = self._fail.setdefault(method, deque())
            for _ in range(count):
                q.append(XapiError(code, *params))

    def add_latency(self, seconds: float) -> None:
        """Sleep ``seconds`` before every API call (0 turns it off)."""
        self.latency = max(0.0, float(seconds))

    def drop_connections(self, count: int = 1, method: str = "*") -> None:
        """Close the connection without answering the next ``count`` requests
        (of ``method``, or of any kind with ``"*"``)."""
        with self._lock:
            self._drop[method] += count

    def take_failure(self, method: str) -> XapiError | None:
        with self._lock:
            q = self._fail.get(method)
            if q:
                err = q.popleft()
                if not q:
                    del self._fail[method]
                return err
        return None

    def take_drop(self, method: str) -> bool:
        with self._lock:
            for key in (method, "*"):
                if self._drop.get(key, 0) > 0:
                    self._drop[key] -= 1
                    return True
        return False

    def clear(self) -> None:
        with self._lock:
            self.latency = 0.0
            self._fail.clear()
            self._drop.clear()
