"""Phase-transition events: one JSON object per transition.

Why: CI engines (Zuul, Nodepool) read machine output line by line. Each
transition is reported once (not once per poll), with the same five keys
every time, so a job log stays short and a parser stays trivial.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, TextIO

EventCallback = Callable[[dict[str, Any]], None]


class EventRecorder:
    """Records transitions for one host and forwards each to ``on_event``.

    Every event has ``phase``, ``state``, ``host``, ``elapsed`` (seconds since
    the recorder was made) and ``detail``; some add keys (``port``,
    ``exit_code``, ``fingerprint``, ``previous_fingerprint``, ``exit_status``).
    """

    def __init__(self, host: str, port: int, on_event: EventCallback | None = None) -> None:
        self.host = host
        self.port = port
        self.on_event = on_event
        self.events: list[dict[str, Any]] = []
        self._start = time.monotonic()
        self._last: tuple[str, str] | None = None

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._start

    def emit(self, phase: str, state: str, detail: str = "", **extra: Any) -> dict[str, Any]:
        """Report an event unconditionally."""
        event: dict[str, Any] = {
            "phase": phase,
            "state": state,
            "host": self.host,
            "elapsed": round(self.elapsed, 3),
            "detail": detail,
            "port": self.port,
        }
        event.update(extra)
        self.events.append(event)
        self._last = (phase, state)
        if self.on_event is not None:
            self.on_event(event)
        return event

    def transition(self, phase: str, state: str, detail: str = "", **extra: Any) -> dict[str, Any] | None:
        """Report an event only when ``(phase, state)`` differs from the last one."""
        if self._last == (phase, state):
            return None
        return self.emit(phase, state, detail, **extra)


def json_line_writer(stream: TextIO) -> EventCallback:
    """An ``on_event`` callback writing one compact JSON line per event, flushed at once."""

    def write(event: dict[str, Any]) -> None:
        stream.write(json.dumps(event, separators=(",", ":"), sort_keys=False) + "\n")
        stream.flush()

    return write
